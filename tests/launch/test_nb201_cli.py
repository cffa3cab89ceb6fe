"""dnas-search on the NAS-Bench-201 space through its command line (real offline data, tiny
supernet): a search per relaxation writes a valid arch string, the one the final alphas
give; bad space settings fail with one clear line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dnas import nb201_string

# Own worker (pytest -n 2 --dist loadgroup): these runs share one XLA cache.
pytestmark = pytest.mark.xdist_group('nb201_cli')

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, 'configs', 'nb201_default.py')


def run_search(workdir, tfds_dir, cache_dir, *overrides):
  cmd = [sys.executable, '-m', 'dnas.launch.search', f'--config={CONFIG}',
         f'--workdir={workdir}', f'--compilation_cache_dir={cache_dir}',
         f'--config.data_dir={tfds_dir}', '--config.model.channels=2',
         '--config.model.cells_per_stage=1', '--config.batch_size=16', '--config.epochs=1',
         '--config.steps_per_epoch=2', '--config.log_every_steps=1',
         '--config.checkpoint_every_steps=2', *overrides]
  env = dict(os.environ, TQDM_DISABLE='1')
  return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.parametrize('relaxation', ['softmax', 'gumbel_hard'])
def test_search_writes_the_arch_string_of_its_alphas(relaxation, tmp_path, tfds_dir, cache_dir):
  workdir = str(tmp_path / relaxation)
  proc = run_search(workdir, tfds_dir, cache_dir, f'--config.relaxation={relaxation}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'NAS-Bench-201 space (3 x 1 cells, C=2, cell BN batch statistics)' in proc.stdout
  arch = nb201_string.load(os.path.join(workdir, 'genotype.json'))
  assert nb201_string.format(nb201_string.parse(arch)) == arch
  assert f'arch ({os.path.join(workdir, "genotype.json")}):\n{arch}' in proc.stdout
  history = [json.loads(line) for line in open(os.path.join(workdir, 'alphas.jsonl'))]
  assert [h['step'] for h in history] == [2]
  alphas = np.array(history[-1]['alphas'])
  assert alphas.shape == (6, 5)
  # Both relaxations read the architecture off softmax(alpha): per edge the largest alpha,
  # `none` included.
  ops = nb201_string.OPS
  assert arch == nb201_string.format([ops[k] for k in alphas.argmax(axis=1)])
  result = json.load(open(os.path.join(workdir, 'result.json')))
  assert result['genotype'] == {'schema_version': 1, 'space': 'nb201', 'arch': arch}
  assert result['steps'] == 2 and 0.0 <= result['supernet_val_accuracy'] <= 1.0
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '2'))


@pytest.mark.parametrize('overrides, message', [
    (['--config.model.space=nasbench'], "unknown search space 'nasbench'; valid names: darts, "
                                        'nb201'),
    (["--config.model.primitives=('none','sep_conv_3x3')"],
     "unknown NAS-Bench-201 op(s) ['sep_conv_3x3']; valid ops: none, skip_connect, nor_conv_1x1, "
     'nor_conv_3x3, avg_pool_3x3'),
    (['--config.model.space=darts'], "config.model lacks field(s) ['layers', 'num_nodes', "
                                     "'conv_form'] for the 'darts' search space: start from "
                                     'configs/default.py'),
    (['--config.model.cells_per_stage=0'], 'config.model.cells_per_stage must be positive'),
])
def test_bad_space_config_is_one_clear_error(tmp_path, tfds_dir, cache_dir, overrides, message):
  proc = run_search(str(tmp_path / 'w'), tfds_dir, cache_dir, *overrides)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
