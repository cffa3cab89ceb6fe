"""NAS-Bench-201 stand-alone networks: retraining through the CLI, NB201's SGD, and their size.

Sizes are checked against hand counts and against NAS-Bench-201's published figures where a
public source gives them (NATS-Bench issues #18 and #24: the benchmark's `params` / `flops`
of architecture indices 1 and 0).
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dnas import nb201_string
from dnas.cells import standalone
from dnas.configs import retrain_nb201_default
from dnas.trainers import retrain, spaces

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, 'configs', 'retrain_nb201_default.py')

BEST = '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|'
INDEX_1 = '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|'
INDEX_0 = '|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|'
ALL_3X3 = '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|'


# ------------------------------------------------------------------------ sizes, by hand


def hand_params(arch: str) -> int:
  """C=16, N=5, CIFAR-10. Per cell edge at c channels: 3x3 conv + affine BN 9c^2 + 2c, 1x1
  conv + BN c^2 + 2c. Macro: stem 3*3*3*16 + 32 = 464; reductions 16->32: 4608 + 64 + 9216 +
  64 + 512 = 14,464 and 32->64: 18432 + 128 + 36864 + 128 + 2048 = 57,600; final BN 128;
  classifier 64*10 + 10 = 650: 73,306."""
  ops = nb201_string.parse(arch)
  per_edge = {'nor_conv_3x3': lambda c: 9 * c * c + 2 * c, 'nor_conv_1x1': lambda c: c * c + 2 * c}
  cells = sum(5 * per_edge[op](c) for c in (16, 32, 64) for op in ops if op in per_edge)
  return 73306 + cells


def hand_nb201_macs(arch: str) -> int:
  """NAS-Bench-201's count at C=16, N=5, 32x32: a 3x3 conv edge costs 32*32*9*16*16 =
  16*16*9*32*32 = 8*8*9*64*64 = 2,359,296 multiply-adds in every stage, a 1x1 edge 262,144.
  Macro: stem 32*32*27*16 = 442,368; each reduction 3x3/2 conv 16*16*9*16*32 = 1,179,648 +
  3x3 conv 2,359,296 + 1x1 shortcut 16*16*16*32 = 131,072 (the same at 32->64): 2 x
  3,670,016; classifier 640 + bias 10."""
  ops = nb201_string.parse(arch)
  cells = 15 * (2359296 * ops.count('nor_conv_3x3') + 262144 * ops.count('nor_conv_1x1'))
  return 442368 + 2 * 3670016 + 650 + cells


def build(arch, **kw):
  kw = dict(dict(num_classes=10, in_channels=3, image_size=32, channels=16, cells_per_stage=5),
            **kw)
  return standalone.build(standalone.resolve(arch), **kw)


@pytest.mark.parametrize('arch, published_params, published_mflops', [
    (INDEX_1, 802426, 113.95137),   # NATS-Bench#18 (0.802 MB, 113.95 M), #36 (0.802426)
    (INDEX_0, None, 15.64737),      # NATS-Bench#24 (cifar10-valid flops 15.64737)
    (BEST, None, None),             # no published figure found: hand count 1,288,506
    (ALL_3X3, None, None),          # the largest network, 1,531,546 (tests/cells/test_nb201.py)
])
def test_sizes_match_hand_counts_and_nas_bench_201(arch, published_params, published_mflops):
  model = nnx.eval_shape(lambda: build(arch))
  params = standalone.num_params(model)
  macs = standalone.paper_macs(model, 1, (32, 32))
  assert params == hand_params(arch)
  assert macs == hand_nb201_macs(arch)
  if published_params:
    assert params == published_params
  if published_mflops:
    assert macs / 1e6 == pytest.approx(published_mflops, abs=5e-6)
  if arch == BEST:
    assert params == 1288506 and macs == 184730250
  if arch == ALL_3X3:
    assert params == 1531546


def test_analytic_flops_are_xla_conv_flops_and_skip_dead_edges():
  """XLA's count = convs + elementwise ops. Swapping one 1x1 edge for a 3x3 edge keeps every
  elementwise op (same BN, same ReLU), so XLA's difference is the conv difference exactly;
  a conv whose output never reaches the cell output is removed by XLA, and not counted."""

  def xla_flops(arch):
    model = build(arch, image_size=8, channels=4, cells_per_stage=1)
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, train=False)[0])
    cost = fn.lower(state, jnp.zeros((1, 8, 8, 3))).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost['flops'], standalone.analytic_flops(model, 1, (8, 8))

  one = '|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|'
  three = one.replace('nor_conv_1x1~1', 'nor_conv_3x3~1')
  (x1, a1), (x3, a3) = xla_flops(one), xla_flops(three)
  assert 1.0 < x1 / a1 < 1.3
  # Edge 3<-1 at c=4 on 8x8, 16x 4x4 and 32x 2x2 (N=1): 3x3 taps that read inside the input
  # (22 per axis of 8, 10 of 4, 4 of 2) minus the 1x1's, times c^2, times 2.
  assert x3 - x1 == a3 - a1 == 2 * ((22 * 22 - 64) * 16 + (10 * 10 - 16) * 64 + (4 * 4 - 4) * 256)
  dead = '|nor_conv_3x3~0|+|nor_conv_1x1~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|'
  assert xla_flops(dead) == xla_flops(dead.replace('nor_conv_3x3~0', 'none~0'))


# ---------------------------------------------------------------------------- optimizer


def test_nb201_sgd_is_torch_sgd_with_nesterov_and_no_clipping():
  """torch.optim.SGD(lr, momentum=0.9, weight_decay=5e-4, nesterov=True), by hand:
  d = g + wd p; buf = m buf + d (buf = d at the first step); p -= lr (d + m buf)."""
  o = retrain_nb201_default.get_config().optim
  assert (o.nesterov, o.lr, o.momentum, o.weight_decay, o.grad_clip) == (True, 0.1, 0.9, 5e-4, 0)
  tx = retrain.make_optimizer(o)
  rng = np.random.default_rng(0)
  p = rng.standard_normal(7)
  grads = [50 * rng.standard_normal(7) for _ in range(3)]  # norm >> 5: clipping would show
  params, state = jnp.asarray(p, jnp.float32), tx.init(jnp.asarray(p, jnp.float32))
  buf = np.zeros_like(p)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
    params = params + updates
    d = g + 5e-4 * p
    buf = 0.9 * buf + d
    p = p - 0.1 * (d + 0.9 * buf)
  np.testing.assert_allclose(np.asarray(params), p, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------------- CLI


def run_retrain(workdir, tfds_dir, cache_dir, genotype, *overrides):
  cmd = [sys.executable, '-m', 'dnas.launch.retrain', f'--config={CONFIG}',
         f'--workdir={workdir}', f'--compilation_cache_dir={cache_dir}',
         f'--config.data_dir={tfds_dir}', f'--config.genotype={genotype}',
         '--config.model.channels=2', '--config.model.cells_per_stage=1',
         '--config.batch_size=16', '--config.steps_per_epoch=2', '--config.epochs=1',
         '--config.log_every_steps=1', '--config.checkpoint_every_steps=2',
         '--config.eval_every_epochs=1', *overrides]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                        env=dict(os.environ, TQDM_DISABLE='1'))


@pytest.mark.xdist_group('nb201_retrain_cli')
def test_a_searched_nb201_arch_retrains_through_the_cli(tmp_path, tfds_dir, cache_dir):
  """genotype.json exactly as an nb201 search writes it (spaces.NB201Space.save of the arch
  read off op weights) goes in with no hand edits; its arch string gives the same run."""
  rng = np.random.default_rng(3)
  arch = nb201_string.derive(rng.dirichlet(np.ones(5), 6))
  geno_path = tmp_path / 'search' / 'genotype.json'
  geno_path.parent.mkdir()
  spaces.get('nb201').save(arch, geno_path)

  results = []
  for name, genotype in (('from_json', geno_path), ('from_string', arch)):
    workdir = tmp_path / name
    proc = run_retrain(workdir, tfds_dir, cache_dir, genotype)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(workdir / 'result.json'))
    assert result['genotype'] == {'schema_version': 1, 'space': 'nb201', 'arch': arch}
    assert result['steps'] == 2 and 0.0 <= result['test_accuracy'] <= 1.0
    assert abs(result['test_accuracy'] * 1000 - round(result['test_accuracy'] * 1000)) < 1e-9
    assert nb201_string.load(workdir / 'genotype.json') == arch
    model = nnx.eval_shape(lambda: build(arch, in_channels=1, image_size=28, channels=2,
                                         cells_per_stage=1))
    assert result['params'] == standalone.num_params(model)
    assert f'NB201 network (3 x 1 cells, C=2), {result["params"]:,} parameters' in proc.stdout
    assert os.path.isdir(workdir / 'checkpoints' / '2')
    results.append(result)
  # Same seed, same data, same network: the same numbers either way.
  assert results[0]['test_accuracy'] == results[1]['test_accuracy']


@pytest.mark.xdist_group('nb201_retrain_cli')
@pytest.mark.parametrize('genotype, message', [
    ('DARTS_V2', "network 'nb201' cannot be built from the darts genotype DARTS_V2: a darts "
                 'genotype builds cifar or imagenet'),
    ('|nor_conv_3x3~0|+|conv~0|none~1|', "arch string '|nor_conv_3x3~0|+|conv~0|none~1|' has 2 "
                                         "node group(s) separated by '+'; NAS-Bench-201 needs 3"),
    ('MISSING', 'does not exist: run the search first (dnas-search '
                '--config=configs/nb201_default.py --workdir=/tmp/dnas_nb201)'),
])
def test_bad_nb201_genotype_is_one_clear_error(tmp_path, tfds_dir, cache_dir, genotype, message):
  if genotype == 'MISSING':
    genotype = str(tmp_path / 'dnas_nb201' / 'genotype.json')
  proc = run_retrain(tmp_path / 'w', tfds_dir, cache_dir, genotype)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith('dnas-retrain: error: ')
  assert message in proc.stderr, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'w')  # refused before anything was written
