"""A short search per built-in relaxation per search space, through dnas-search's command line.

Covered elsewhere, not repeated here: softmax on DARTS (test_search_cli.py), softmax and
gumbel_hard on NB201 (test_nb201_cli.py), a user's relaxation on DARTS
(test_relaxation_cli.py). Each run here is as small as the CLI allows (DARTS: 1 cell, C=4,
4 ops; NB201: N=1, C=2; 2 steps) and checks: a genotype file that reads back, finite
losses, and alphas that moved from their initial values (rebuilt here from the seed).
"""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from dnas import genotype, nb201_string
from dnas.cells import darts, nb201

# One worker runs every search of this module (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group('relaxation_space_cli')

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DARTS_OPS = ('none', 'max_pool_3x3', 'skip_connect', 'sep_conv_3x3')
SETTINGS = {
    'darts': ['--config.model.channels=4', '--config.model.layers=1',
              f'--config.model.primitives={DARTS_OPS!r}'],
    'nb201': ['--config.model.channels=2', '--config.model.cells_per_stage=1'],
}
CONFIGS = {'darts': 'default.py', 'nb201': 'nb201_default.py'}


def initial_alphas(space):
  """The alphas the search starts from: the supernet built with the search's seed (2)."""
  if space == 'darts':
    net = darts.SearchNetwork(num_classes=10, in_channels=1, channels=4, layers=1,
                              primitives=DARTS_OPS, rngs=nnx.Rngs(2))
    return {'normal': net.alphas_normal[...], 'reduce': net.alphas_reduce[...]}
  net = nb201.SearchNetwork(num_classes=10, in_channels=1, channels=2, cells_per_stage=1,
                            rngs=nnx.Rngs(2))
  return {'alphas': net.alphas[...]}


@pytest.mark.parametrize('space, relaxation', [
    ('darts', 'gumbel_softmax'), ('darts', 'gumbel_hard'), ('darts', 'sigmoid'),
    ('darts', 'dirichlet'),
    ('nb201', 'gumbel_softmax'), ('nb201', 'sigmoid'), ('nb201', 'dirichlet')])
def test_short_search(space, relaxation, tmp_path, tfds_dir, cache_dir):
  workdir = tmp_path / 'w'
  cmd = [sys.executable, '-m', 'dnas.launch.search',
         f'--config={os.path.join(ROOT, "configs", CONFIGS[space])}', f'--workdir={workdir}',
         f'--compilation_cache_dir={cache_dir}', f'--config.data_dir={tfds_dir}',
         '--config.batch_size=32', '--config.epochs=1', '--config.steps_per_epoch=2',
         '--config.log_every_steps=1', '--config.checkpoint_every_steps=2',
         f'--config.relaxation={relaxation}', *SETTINGS[space]]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, TQDM_DISABLE='1'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'relaxation={relaxation}' in proc.stdout

  path = workdir / 'genotype.json'
  if space == 'darts':
    geno = genotype.load(path, DARTS_OPS, space='darts')
    assert len(geno.normal) == len(geno.reduce) == 8
  else:
    arch = nb201_string.load(path)
    assert nb201_string.format(nb201_string.parse(arch)) == arch
  losses = [float(v) for v in re.findall(r'train loss (\S+?),', proc.stdout)]
  assert losses and all(math.isfinite(v) for v in losses), proc.stdout[-2000:]

  record = [json.loads(l) for l in open(workdir / 'alphas.jsonl')][-1]
  assert record['step'] == 2
  for name, start in initial_alphas(space).items():
    final = np.array(record[name])
    assert final.shape == start.shape and np.all(np.isfinite(final))
    assert np.abs(final - start).max() > 1e-5, f'{name} did not move'
