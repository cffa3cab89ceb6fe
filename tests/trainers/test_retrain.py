"""The retrain step and its data: loss with the auxiliary head, drop-path schedule, Cutout,
the train+val split. Expected values are computed here independently (numpy)."""
import functools

import jax
import numpy as np
import pytest
from flax import nnx

from dnas.cells import eval_network, known_genotypes
from dnas.configs import retrain_default
from dnas.genotype import GenotypeError
from dnas.trainers import data, retrain


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _ce(logits, labels):
  return float(-_log_softmax(np.asarray(logits, np.float64))[np.arange(len(labels)),
                                                              labels].mean())


def test_drop_path_rises_linearly_per_epoch_as_the_reference():
  """The reference sets drop_path_prob * epoch / epochs at the start of each epoch."""
  schedule = retrain.drop_path_schedule(0.2, epochs=4, steps_per_epoch=10)
  np.testing.assert_allclose([float(schedule(s)) for s in (0, 9, 10, 25, 39)],
                             [0.0, 0.0, 0.05, 0.1, 0.15], rtol=1e-6)


def test_train_step_adds_the_auxiliary_loss_with_weight_0_4():
  geno = known_genotypes.load('DARTS_V2')
  model = eval_network.NetworkCIFAR(geno, num_classes=10, in_channels=1, image_size=8,
                                    channels=4, layers=3, conv_form='folded',
                                    rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  batch = {'image': rng.standard_normal((8, 8, 8, 1)).astype(np.float32),
           'label': rng.integers(0, 10, 8).astype(np.int32)}
  tx = retrain.make_optimizer(retrain_default.get_config().optim)
  graphdef, state = retrain.init_state(model, tx, seed=0)
  forward = jax.jit(lambda s, x: nnx.merge(graphdef, s.params, s.batch_stats, copy=True)(
      x, train=True))
  logits, aux = forward(state, batch['image'])
  step = jax.jit(functools.partial(retrain.train_step, graphdef=graphdef, tx=tx, aux_weight=0.4))
  new_state, metrics = step(state, batch, 0.1, 0.0)
  main, auxiliary = _ce(logits, batch['label']), _ce(aux, batch['label'])
  np.testing.assert_allclose(float(metrics['main_loss']), main, rtol=1e-5)
  np.testing.assert_allclose(float(metrics['loss']), main + 0.4 * auxiliary, rtol=1e-5)
  assert int(new_state.step) == 1
  # BN running averages moved (train mode).
  before = jax.tree.leaves(state.batch_stats)
  after = jax.tree.leaves(new_state.batch_stats)
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  # The learning rate fed in is the one used: from a zero momentum buffer, SGD's first update
  # is -lr * (clipped grad + wd * w), so twice the lr moves every weight twice as far.
  double, _ = step(state, batch, 0.2, 0.0)
  for w0, w1, w2 in zip(*(jax.tree.leaves(s.params) for s in (state, new_state, double))):
    np.testing.assert_allclose(np.asarray(w2) - w0, 2 * (np.asarray(w1) - w0), rtol=1e-4,
                               atol=5e-7)


def test_cutout_zeroes_one_clipped_square():
  image = np.ones((32, 32, 3), np.float32)
  sizes = set()
  for seed in range(200):
    out = data.cutout(image, np.random.default_rng(seed), 16)
    zero = np.all(out == 0, axis=-1)
    assert np.all((out == 0) | (out == 1)) and np.array_equal(zero, np.any(out == 0, axis=-1))
    rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
    if len(rows):  # a rectangle: every pixel in its bounding box is zero
      assert zero[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
      assert zero.sum() == len(rows) * len(cols)
      assert len(rows) <= 16 and len(cols) <= 16
    sizes.add(int(zero.sum()))
  assert 256 in sizes and min(sizes) < 256  # full squares inside, clipped ones at borders
  assert np.all(image == 1)  # the input is not modified


def test_retrain_data_is_train_plus_val_with_cutout(tfds_dir):
  assert data.num_examples('mnist5k', 'train+val', tfds_dir) == 4000
  plain = data.make_dataset('mnist5k', 'train+val', batch_size=8, seed=3, train=True,
                            data_dir=tfds_dir)
  cut = data.make_dataset('mnist5k', 'train+val', batch_size=8, seed=3, train=True,
                          data_dir=tfds_dir, cutout_length=16)
  a, b = plain[5], cut[5]
  np.testing.assert_array_equal(a['label'], b['label'])  # same batch, holes added
  holes = (b['image'] == 0) & (a['image'] != 0)
  assert holes.any()
  assert np.all((b['image'] == a['image']) | (b['image'] == 0))
  np.testing.assert_array_equal(cut[5]['image'], b['image'])  # deterministic in (seed, step)
  with pytest.raises(ValueError, match="Unknown split 'tset'"):
    data.make_dataset('mnist5k', 'train+tset', batch_size=8, seed=0, train=True,
                      data_dir=tfds_dir)


def test_missing_genotype_file_says_how_to_make_one(tmp_path):
  with pytest.raises(GenotypeError) as e:
    retrain.resolve_genotype(str(tmp_path / 'nowhere' / 'genotype.json'))
  msg = str(e.value)
  assert 'does not exist: run the search first (dnas-search --config=configs/default.py' in msg
  assert '--config.genotype=DARTS_V2' in msg and '\n' not in msg
