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
