"""PC-DARTS through dnas-search's command line (configs/pcdarts.py, tiny supernets).

DARTS space: the genotype written is the one PC-DARTS' rule gives from the final alphas and
betas in alphas.jsonl (recomputed here: softmax(alpha) x per-node softmax(beta), top-2
edges per node); the betas moved. NB201 space: partial channels and edge normalisation with
another relaxation. A bad K is one clear line.
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

pytestmark = pytest.mark.xdist_group('pcdarts_cli')

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPS = ('none', 'max_pool_3x3', 'skip_connect', 'sep_conv_3x3')


def run(config, workdir, tfds_dir, cache_dir, *overrides):
  cmd = [sys.executable, '-m', 'dnas.launch.search', f'--config={config}',
         f'--workdir={workdir}', f'--compilation_cache_dir={cache_dir}',
         f'--config.data_dir={tfds_dir}', '--config.batch_size=32', '--config.epochs=1',
         '--config.steps_per_epoch=2', '--config.log_every_steps=1',
         '--config.checkpoint_every_steps=2', *overrides]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, TQDM_DISABLE='1'))


def softmax(a):
  e = np.exp(a - a.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def finite_losses(stdout):
  losses = [float(v) for v in re.findall(r'train loss (\S+?),', stdout)]
  return bool(losses) and all(math.isfinite(v) for v in losses)


def test_darts_search_reads_the_genotype_off_alphas_times_edge_weights(tmp_path, tfds_dir,
                                                                       cache_dir):
  workdir = tmp_path / 'w'
  proc = run(os.path.join(ROOT, 'configs', 'pcdarts.py') + ':mnist5k', workdir, tfds_dir,
             cache_dir, '--config.model.channels=4', '--config.model.layers=1',
             f'--config.model.primitives={OPS!r}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'DARTS space (1 cells, C=4, partial channels 1/4, edge normalisation)' in proc.stdout
  assert finite_losses(proc.stdout), proc.stdout[-2000:]
  identity = json.load(open(workdir / 'experiment.json'))
  assert identity['model.partial_channels'] == 4 and identity['model.edge_normalization']

  record = [json.loads(l) for l in open(workdir / 'alphas.jsonl')][-1]
  start = darts.SearchNetwork(num_classes=10, in_channels=1, channels=4, layers=1,
                              primitives=OPS, partial_channels=4, edge_normalization=True,
                              rngs=nnx.Rngs(2))
  for name in ('alphas_normal', 'alphas_reduce', 'betas_normal', 'betas_reduce'):
    final = np.array(record[name.removeprefix('alphas_')])
    assert np.abs(final - getattr(start, name)[...]).max() > 1e-5, f'{name} did not move'

  weights = []
  for cell in ('normal', 'reduce'):
    betas = np.array(record[f'betas_{cell}'])
    edge = np.concatenate([softmax(betas[s:s + n]) for s, n in ((0, 2), (2, 3), (5, 4), (9, 5))])
    weights.append(softmax(np.array(record[cell])) * edge[:, None])
  want = genotype.derive(*weights, OPS)
  got = genotype.load(workdir / 'genotype.json', OPS, space='darts')
  assert got == want


def test_nb201_search_with_partial_channels_and_edge_normalization(tmp_path, tfds_dir,
                                                                   cache_dir):
  workdir = tmp_path / 'w'
  proc = run(os.path.join(ROOT, 'configs', 'nb201_default.py'), workdir, tfds_dir, cache_dir,
             '--config.model.channels=4', '--config.model.cells_per_stage=1',
             '--config.model.partial_channels=2', '--config.model.edge_normalization=True',
             '--config.relaxation=gumbel_softmax')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'partial channels 1/2, edge normalisation)' in proc.stdout
  assert finite_losses(proc.stdout), proc.stdout[-2000:]
  arch = nb201_string.load(workdir / 'genotype.json')
  record = [json.loads(l) for l in open(workdir / 'alphas.jsonl')][-1]
  # Edge weights scale whole rows: the read-off is the argmax of the alphas per edge.
  assert arch == nb201_string.format([nb201.PRIMITIVES[k]
                                      for k in np.argmax(record['alphas'], axis=1)])
  start = nb201.SearchNetwork(num_classes=10, in_channels=1, channels=4, cells_per_stage=1,
                              partial_channels=2, edge_normalization=True, rngs=nnx.Rngs(2))
  assert np.abs(np.array(record['betas']) - start.betas[...]).max() > 1e-5


def test_bad_partial_channels_is_one_clear_error(tmp_path, tfds_dir, cache_dir):
  proc = run(os.path.join(ROOT, 'configs', 'pcdarts.py') + ':mnist5k', tmp_path / 'w',
             tfds_dir, cache_dir, '--config.model.channels=6')
  assert proc.returncode != 0
  assert ('dnas-search: error: config.model.partial_channels K=4 must divide the channel '
          'count of every cell of config.model.channels=6, but [6] is not divisible by 4: '
          'choose channels that are a multiple of 4, or another K') in proc.stderr, proc.stderr
  assert 'Traceback' not in proc.stderr
