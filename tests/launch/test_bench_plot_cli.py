"""dnas-bench and dnas-plot through their command lines (tiny networks, synthetic history)."""
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from dnas import genotype
from dnas.cells import known_genotypes

TINY = ['--channels=4', '--layers=3', '--image_size=16', '--batch=4', '--repeats=3']


def _run(module, *args, env=None):
  return subprocess.run([sys.executable, '-m', f'dnas.launch.{module}', *args],
                        capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, **(env or {})))


def test_bench_compares_genotypes_side_by_side(tmp_path):
  path = tmp_path / 'searched' / 'genotype.json'
  path.parent.mkdir()
  genotype.save(known_genotypes.load('P_DARTS'), path)
  out = tmp_path / 'bench.json'
  proc = _run('bench', '--genotype=DARTS_V2', f'--genotype={path}', *TINY, '--noisolate',
              f'--json_out={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  header = lines[0].split()
  assert header == ['DARTS_V2', str(path)]
  results = json.loads(lines[-1])
  assert results == json.load(open(out))
  assert [r['genotype'] for r in results] == ['DARTS_V2', str(path)]
  for r in results:
    assert r['layers'] == 3 and r['channels'] == 4 and r['image_size'] == 16
    assert r['params'] > 0 and r['compile_s'] > 0 and r['throughput_img_s'] > 0
    assert 0 < r['latency_ms_median'] <= r['latency_ms_p90']
    # XLA counts the convs the analytic count has, plus the elementwise ops.
    assert 1.0 < r['flops_xla'] / r['flops_analytic'] < 1.5
    assert r['peak_memory_bytes'] > 0 and r['device'] and r['backend'] == 'cpu'
  # Different cells, different sizes; each row of the table has one value per genotype.
  assert results[0]['params'] != results[1]['params']
  for name in ('params', 'latency b=1 median', 'latency b=1 p90', 'throughput b=4',
               'FLOPs XLA, b=1', 'peak memory', 'compile b=1', 'device'):
    assert any(line.startswith(name) for line in lines), name


def test_bench_unknown_genotype_is_one_clear_error():
  proc = _run('bench', '--genotype=DARTS_V3')
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "dnas-bench: error: unknown genotype 'DARTS_V3'")
  assert 'DARTS_V2' in proc.stderr and 'Traceback' not in proc.stderr


def _alpha_history(path, epochs=3):
  """alphas.jsonl in trainers/search.py's format: {step, epoch, normal, reduce} per line."""
  rng = np.random.default_rng(0)
  with open(path, 'w') as f:
    for e in range(1, epochs + 1):
      f.write(json.dumps({'step': 10 * e, 'epoch': float(e),
                          'normal': (rng.standard_normal((14, 8)) * e).round(6).tolist(),
                          'reduce': (rng.standard_normal((14, 8)) * e).round(6).tolist()})
              + '\n')


def _check_png(path):
  import matplotlib.image
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  image = matplotlib.image.imread(path)
  assert image.shape[0] > 200 and image.shape[1] > 200
  assert image[..., :3].std() > 0.05  # not a blank canvas


def _check_svg(path):
  root = ET.parse(path).getroot()
  assert root.tag == '{http://www.w3.org/2000/svg}svg'
  assert len(list(root.iter())) > 100  # drawn content, not an empty document


def test_plot_writes_cells_and_alpha_heatmap_images(tmp_path):
  history = tmp_path / 'search_run' / 'alphas.jsonl'
  history.parent.mkdir()
  _alpha_history(history)
  out = tmp_path / 'plots'
  proc = _run('plot', '--genotype=DARTS_V2', f'--alphas={history}', f'--out_dir={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  written = proc.stdout.split()
  assert sorted(os.path.basename(p) for p in written) == [
      'alphas_search_run.png', 'alphas_search_run.svg', 'cells_DARTS_V2.png',
      'cells_DARTS_V2.svg']
  for p in written:
    assert os.path.getsize(p) > 10_000
    (_check_png if p.endswith('.png') else _check_svg)(p)


def test_plot_bad_alpha_history_is_a_clear_error(tmp_path):
  from dnas.trainers import plot
  with pytest.raises(FileNotFoundError, match='dnas-search writes it as <workdir>/alphas.jsonl'):
    plot.read_alpha_history(str(tmp_path / 'alphas.jsonl'))
  bad = tmp_path / 'result.json'
  bad.write_text(json.dumps({'steps': 2}) + '\n')
  with pytest.raises(ValueError, match='holds no alpha records'):
    plot.read_alpha_history(str(bad))


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path):
  code = ('import sys; sys.modules["matplotlib"] = None; '
          f'sys.argv = ["dnas-plot", "--genotype=DARTS_V2", "--out_dir={tmp_path}"]; '
          'from dnas.launch import plot; plot.run()')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 1
  assert "pip install 'dnas[plot]'" in proc.stderr and 'Traceback' not in proc.stderr
  assert not os.listdir(tmp_path)


# ------------------------------------------------------------------------------- NB201

NB201_ARCH = ('|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|'
              '+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|')


def test_bench_nb201_arch_string_and_genotype_json(tmp_path):
  """An arch string and an nb201 search's genotype.json, tiny (C=4, N=1, 16x16)."""
  from dnas import nb201_string
  path = tmp_path / 'nb201_search' / 'genotype.json'
  path.parent.mkdir()
  other = '|nor_conv_1x1~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|'
  nb201_string.save(other, path)
  proc = _run('bench', f'--genotype={NB201_ARCH}', f'--genotype={path}', '--channels=4',
              '--layers=1', '--image_size=16', '--batch=4', '--repeats=3', '--noisolate')
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  results = json.loads(lines[-1])
  assert [r['genotype'] for r in results] == [NB201_ARCH, str(path)]
  # Hand counts at C=4, N=1, 3 input channels, 10 classes. Macro: stem 108 + 8 = 116,
  # reductions 4->8: 288+16+576+16+32 = 928 and 8->16: 1152+32+2304+32+128 = 3,648, BN 32,
  # classifier 170: 4,894. Cells: 3x3 edge 9c^2 + 2c, 1x1 edge c^2 + 2c, at c = 4, 8, 16.
  conv3 = sum(9 * c * c + 2 * c for c in (4, 8, 16))
  conv1 = sum(c * c + 2 * c for c in (4, 8, 16))
  assert [r['params'] for r in results] == [4894 + 5 * conv3, 4894 + 2 * conv1]
  # NAS-Bench-201's count, every tap: stem 16*16*27*4 = 27,648; reductions 8*8*9*4*8 +
  # 8*8*9*8*8 + 8*8*4*8 = 57,344 and 4*4*9*8*16 + 4*4*9*16*16 + 4*4*8*16 = 57,344; classifier
  # 160 + 10. A 3x3 edge: 16*16*9*16 = 36,864 in each stage; a 1x1 edge 4,096.
  macro = 27648 + 57344 + 57344 + 170
  assert [r['macs_paper'] for r in results] == [macro + 3 * 5 * 36864, macro + 3 * 2 * 4096]
  for r in results:
    assert r['network'] == 'nb201' and r['space'] == 'nb201' and r['layers'] == 1
    assert r['conv_forms_used'] == ['dense']
    assert 1.0 < r['flops_xla'] / r['flops_analytic'] < 1.5
    assert 0 < r['latency_ms_median'] <= r['latency_ms_p90'] and r['throughput_img_s'] > 0
  assert any(line.startswith('network') and line.count('nb201 C=4 N=1 16px') == 2
             for line in lines)


def test_bench_darts_genotype_on_the_nb201_network_is_one_clear_error():
  proc = _run('bench', '--genotype=DARTS_V2', '--network=nb201')
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      "dnas-bench: error: network 'nb201' cannot be built from the darts genotype DARTS_V2: a "
      'darts genotype builds cifar or imagenet')


def test_plot_nb201_cell_and_alpha_history(tmp_path):
  """An arch string and an nb201 search's outputs (genotype.json, alphas.jsonl)."""
  from dnas import nb201_string
  workdir = tmp_path / 'nb201_run'
  workdir.mkdir()
  nb201_string.save('|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|'
                    'nor_conv_3x3~2|', workdir / 'genotype.json')
  rng = np.random.default_rng(0)
  with open(workdir / 'alphas.jsonl', 'w') as f:
    for e in (1, 2, 3):
      f.write(json.dumps({'step': e, 'epoch': float(e),
                          'alphas': (rng.standard_normal((6, 5)) * e).tolist()}) + '\n')
  out = tmp_path / 'plots'
  proc = _run('plot', f'--genotype={NB201_ARCH}', f'--genotype={workdir / "genotype.json"}',
              f'--alphas={workdir / "alphas.jsonl"}', f'--out_dir={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  written = proc.stdout.split()
  assert sorted(os.path.basename(p) for p in written) == [
      'alphas_nb201_run.png', 'alphas_nb201_run.svg', 'cells_nb201_c3_c3_c3_skip_c3_c3.png',
      'cells_nb201_c3_c3_c3_skip_c3_c3.svg', 'cells_nb201_run.png', 'cells_nb201_run.svg']
  for p in written:
    assert os.path.getsize(p) > 10_000
    (_check_png if p.endswith('.png') else _check_svg)(p)
  # Every edge is drawn with its op: the 6 labels of the cell, `none` ones included.
  svg = open(out / 'cells_nb201_run.svg').read()
  for op, count in (('nor_conv_3x3', 3), ('none', 2), ('avg_pool_3x3', 1)):
    assert svg.count(f'<!-- {op} -->') == count, op
