"""Regularizers against their formulas, computed here independently in numpy.

Loss terms (beta-DARTS, FairDARTS) and schedules against their formulas; SDARTS-RS inside
its box, SDARTS-ADV inside its epsilon ball and raising the train loss of the tiny float64
net; DARTS-'s edge output = mixed op + beta * skip(x) with the skip computed here (identity,
and FactorizedReduce at stride 2); P-DARTS's skip dropout and its cap; R-DARTS's power
iteration against numpy.linalg.eigh of the dense Hessian of the tiny net's val loss; each
early-stopping rule on crafted histories; the configuration errors.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import nnx
from jax.flatten_util import ravel_pytree

from dnas import bilevel, genotype, regularizers
from dnas.cells import darts
from dnas.regularizers import darts_plus, pdarts, rdarts, sdarts_adv

from dnas import arch
from tiny_problem import batch  # tests/dnas/tiny_problem.py

pytestmark = pytest.mark.xdist_group('regularizers')

BUILTINS = ('beta_decay', 'darts_minus', 'darts_plus', 'pdarts', 'rdarts', 'sdarts_adv',
            'sdarts_rs', 'zero_one')
OPS = darts.PRIMITIVES
RNG = np.random.default_rng(0)
ALPHAS = [RNG.standard_normal((14, 8)).astype(np.float32),
          RNG.standard_normal((14, 8)).astype(np.float32)]


def micro_model():
  """A float64 supernet of one (reduction) cell with one node: 2 edges, 32 alphas, so that
  the dense Hessian and the PGD passes compile in seconds."""
  model = darts.SearchNetwork(num_classes=3, in_channels=1, channels=2, layers=1, num_nodes=1,
                              multiplier=1, conv_form='folded', rngs=nnx.Rngs(0))
  graphdef, alphas, stats, weights = arch.split(model)
  to64 = lambda t: jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), t)
  alphas = jax.tree.map(lambda v: jax.random.normal(jax.random.key(3), v.shape, jnp.float64),
                        alphas)
  return graphdef, alphas, to64(stats), to64(weights)


def make(name, args=None, total_steps=100, steps_per_epoch=10, **kw):
  regs = regularizers.make([name], {name: args or {}}, total_steps=total_steps,
                           steps_per_epoch=steps_per_epoch, **kw)
  return regs.items[0]


# --------------------------------------------------------------------------- configuration


def test_all_builtins_are_registered_and_listed_in_the_config():
  from dnas.configs import default
  assert set(BUILTINS) <= set(regularizers.names())
  assert set(BUILTINS) <= set(default.get_config().regularizer_args.keys())


@pytest.mark.parametrize('names, args, relaxation, message', [
    (['nope'], {}, 'softmax', "unknown regularizer 'nope'; valid names: beta_decay, darts_minus"),
    (['beta_decay'], {'beta_decay': {'lam': 1}}, 'softmax',
     "regularizer 'beta_decay' has no hyperparameter(s) ['lam']; valid: weight_start, weight_end"),
    (['beta_decay', 'beta_decay'], {}, 'softmax', 'more than once'),
    ('beta_decay', {}, 'softmax', 'must be a list of names'),
    (['zero_one'], {}, 'softmax', '--config.relaxation=sigmoid'),
    (['sdarts_rs'], {'sdarts_rs': {'total_steps': 5}}, 'softmax', 'set by the search'),
    (['pdarts'], {'pdarts': {'dropout_rate': 1.0}}, 'softmax', 'dropout_rate must be in [0, 1)'),
])
def test_bad_configuration_is_refused_with_the_fix(names, args, relaxation, message):
  with pytest.raises(ValueError, match=None) as err:
    regularizers.make(names, args, total_steps=10, steps_per_epoch=2, relaxation=relaxation)
  assert message in str(err.value)


def test_args_of_unselected_regularizers_are_ignored_and_selected_ones_override():
  regs = regularizers.make(['beta_decay'], {'beta_decay': {'weight_end': 5.0},
                                            'pdarts': {'max_skips': 1}},
                           total_steps=10, steps_per_epoch=2)
  assert [r.name for r in regs.items] == ['beta_decay'] and regs.items[0].weight_end == 5.0


# ------------------------------------------------------------------------------ loss terms


@pytest.mark.parametrize('step', [0, 35, 99])
def test_beta_decay_is_lambda_times_mean_logsumexp(step):
  reg = make('beta_decay', total_steps=100, steps_per_epoch=10)
  epoch = step // 10
  lam = 0.0 + (25.0 - 0.0) * epoch / 10
  want = lam * np.mean(np.concatenate([scipy.special.logsumexp(a, axis=-1) for a in ALPHAS]))
  got = float(reg.loss([jnp.asarray(a) for a in ALPHAS], jnp.asarray(step)))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert (got != 0) == (epoch > 0)


def test_zero_one_is_minus_weight_times_mean_squared_distance_from_half():
  reg = make('zero_one', {'weight': 3.0}, relaxation='sigmoid')
  sig = 1 / (1 + np.exp(-np.concatenate([a.ravel() for a in ALPHAS])))
  want = -3.0 * np.mean((sig - 0.5) ** 2)
  np.testing.assert_allclose(float(reg.loss([jnp.asarray(a) for a in ALPHAS], 0)), want,
                             rtol=1e-5)


def test_loss_terms_reach_only_the_architecture_loss():
  """classification_loss(extra_loss=regs.loss) adds exactly the terms to the loss."""
  with jax.enable_x64(True):
    graphdef, alphas, stats, weights = micro_model()
    regs = regularizers.make(['beta_decay'], {'beta_decay': {'weight_start': 2.0}},
                             total_steps=10, steps_per_epoch=5)
    b = batch(1)
    plain, reg = jax.jit(lambda w, a, s: (
        bilevel.classification_loss(graphdef)(w, a, s, b, None, 0)[0],
        bilevel.classification_loss(graphdef, regs.loss)(w, a, s, b, None, 0)[0]))(
            weights, alphas, stats)
    arrays = [np.asarray(a) for a in jax.tree.leaves(alphas)]
    want = 2.0 * np.mean(np.concatenate([scipy.special.logsumexp(a, -1) for a in arrays]))
    np.testing.assert_allclose(float(reg - plain), want, rtol=1e-10)


# ---------------------------------------------------------------------------------- SDARTS


def test_sdarts_rs_draws_uniformly_inside_the_scheduled_box():
  reg = make('sdarts_rs', total_steps=100, steps_per_epoch=10)
  step = 55  # epoch 5: eps = 0.03 + 0.27 * 5 / 10
  eps = 0.03 + 0.27 * 0.5
  alphas = {'n': jnp.asarray(ALPHAS[0]), 'r': jnp.asarray(ALPHAS[1])}
  out = reg.perturb(alphas, key=jax.random.key(3), step=jnp.asarray(step), loss_fn=None)
  delta = np.concatenate([np.asarray(out[k] - alphas[k]).ravel() for k in ('n', 'r')])
  assert np.abs(delta).max() <= eps * (1 + 1e-6)
  assert np.abs(delta).max() > 0.9 * eps and abs(delta.mean()) < 0.1 * eps
  np.testing.assert_allclose(float(reg.scalars(step)['epsilon']), eps, rtol=1e-6)


@pytest.fixture(scope='module')
def tiny():
  with jax.enable_x64(True):
    graphdef, alphas, stats, weights = micro_model()
    return dict(graphdef=graphdef, alphas=alphas, stats=stats, weights=weights,
                loss_fn=bilevel.classification_loss(graphdef))


def test_sdarts_adv_stays_in_the_epsilon_ball_and_raises_the_train_loss(tiny, x64):
  eps = 0.2
  loss = lambda a: tiny['loss_fn'](tiny['weights'], a, tiny['stats'], batch(1), None, 0)[0]
  attack = jax.jit(lambda a, key: sdarts_adv.pgd_linf(a, loss, key=key, epsilon=eps, steps=3))
  out = attack(tiny['alphas'], jax.random.key(0))
  delta = ravel_pytree(out)[0] - ravel_pytree(tiny['alphas'])[0]
  assert float(jnp.max(jnp.abs(delta))) <= eps + 1e-12
  assert float(jnp.max(jnp.abs(delta))) > 0.5 * eps  # it did move
  before, after = float(loss(tiny['alphas'])), float(loss(out))
  assert after > before + 1e-3, (before, after)
  # The random start alone raises it less than the attack (the ascent steps matter).
  rand = jax.jit(lambda a, key: sdarts_adv.pgd_linf(a, loss, key=key, epsilon=eps, steps=0))
  assert after > float(loss(rand(tiny['alphas'], jax.random.key(0))))


# ----------------------------------------------------------------------- DARTS- / P-DARTS


def np_factorized_reduce(x, w1, w2):
  """ReLU, two 1x1 stride-2 convs offset by one pixel, concat, BN (batch statistics)."""
  x = np.maximum(x, 0)
  a = np.einsum('bhwc,ced->bhwed', x[:, ::2, ::2], w1)
  b = np.einsum('bhwc,ced->bhwed', x[:, 1::2, 1::2], w2)
  y = np.concatenate([a, b], -1)
  y = y.reshape(*y.shape[:3], -1)
  y = (y - y.mean((0, 1, 2))) / np.sqrt(y.var((0, 1, 2)) + 1e-5)
  return y.reshape(*y.shape[:3], w1.shape[1], -1)


@pytest.mark.parametrize('stride', [1, 2])
def test_darts_minus_edge_output_is_mixed_op_plus_beta_skip(stride):
  edges, c = 3, 4
  fan = darts.FanOutMixedOp(c, edges, stride, OPS, 'folded', nnx.Rngs(0), aux_skip=True,
                            aux_rngs=nnx.Rngs(1))
  h = jax.random.normal(jax.random.key(2), (2, 8, 8, c))
  w = jax.nn.softmax(jax.random.normal(jax.random.key(3), (edges, len(OPS))))
  beta = 0.37
  plain = np.asarray(fan(h, w, True))
  got = np.asarray(fan(h, w, True, {regularizers.AUX_SKIP: beta}))
  if stride == 1:
    skip = np.broadcast_to(np.asarray(h)[..., None, :], plain.shape)
  else:
    skip = np_factorized_reduce(np.asarray(h), np.asarray(fan.aux_reduce.w1[...]),
                                np.asarray(fan.aux_reduce.w2[...]))
  np.testing.assert_allclose(got, plain + beta * skip, atol=2e-5)
  assert np.abs(beta * skip).max() > 0.1


def test_darts_minus_network_beta_schedule_and_untouched_initialisation():
  """The supernet with DARTS- equals the plain one once beta reaches 0 (its auxiliary
  weights come from a stream of their own), and differs while beta > 0."""
  kw = dict(num_classes=3, in_channels=1, channels=2, layers=3, num_nodes=1, multiplier=1,
            conv_form='folded')  # a normal cell, then two reduction cells
  regs = regularizers.make(['darts_minus'], total_steps=4, steps_per_epoch=1)
  assert [float(regs.items[0].beta(s)) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
  plain = darts.SearchNetwork(**kw, rngs=nnx.Rngs(0))
  minus = darts.SearchNetwork(**kw, regularizers=regs, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).standard_normal((4, 8, 8, 1)).astype(np.float32)
  # Eval mode (running statistics: nothing to update), so the modules can be closed over.
  want = np.asarray(jax.jit(lambda x: plain(x, train=False))(x))
  run = jax.jit(lambda x, step: minus(x, train=False, step=step))
  np.testing.assert_allclose(np.asarray(run(x, 4)), want, atol=1e-5)
  assert np.abs(np.asarray(run(x, 0)) - want).max() > 1e-3


def test_pdarts_skip_dropout_drops_identity_skips_per_edge_at_the_scheduled_rate():
  edges, c = 3, 4
  only_skip = np.zeros((edges, len(OPS)), np.float32)
  only_skip[:, OPS.index('skip_connect')] = 1.0
  h = jax.random.normal(jax.random.key(2), (4, 8, 8, c)) + 5.0  # no exact zeros
  reg = make('pdarts', {'dropout_rate': 0.4}, total_steps=100, steps_per_epoch=10)
  p = float(reg.rate(25))
  np.testing.assert_allclose(p, 0.4 * np.exp(-0.2 * 2), rtol=1e-6)
  mods = {regularizers.SKIP_DROPOUT: p}
  fan = darts.FanOutMixedOp(c, edges, 1, OPS, 'folded', nnx.Rngs(0))
  out = np.asarray(fan(h, only_skip, True, mods, jax.random.key(5)))
  hb = np.broadcast_to(np.asarray(h)[..., None, :], out.shape)
  dropped = out == 0
  np.testing.assert_allclose(out[~dropped], hb[~dropped] / (1 - p), rtol=1e-5)
  assert abs(dropped.mean() - p) < 0.03
  assert (dropped[..., 0, :] != dropped[..., 1, :]).any()  # independent per edge
  # Eval mode and stride 2 (FactorizedReduce, not an identity) keep every skip output.
  np.testing.assert_array_equal(np.asarray(fan(h, only_skip, False, mods, jax.random.key(5))),
                                np.asarray(fan(h, only_skip, False)))
  fan2 = darts.FanOutMixedOp(c, edges, 2, OPS, 'folded', nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(fan2(h, only_skip, True, mods, jax.random.key(5))),
                                np.asarray(fan2(h, only_skip, True)))


def skip_heavy_weights():
  """Normal-cell weights whose DARTS read-off has 6 skips (strengths 0.9 .. 0.4)."""
  rng = np.random.default_rng(1)
  w = rng.uniform(0.0, 0.1, (14, len(OPS)))
  skip = OPS.index('skip_connect')
  strengths = iter([0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35])
  start = 0
  for node in range(4):
    for e in range(2):  # the first two edges of every node: skip-dominated
      w[start + e, skip] = next(strengths)
    w[start:start + 2 + node, OPS.index('sep_conv_3x3')] += 0.2  # the runner-up op
    start += 2 + node
  w[5, OPS.index('sep_conv_3x3')] = 0.95  # node 2: one strong conv edge instead of a skip
  w[10, OPS.index('dil_conv_3x3')] = 0.95  # node 3 likewise
  return w, rng.uniform(0, 1, (14, len(OPS)))


@pytest.mark.parametrize('max_skips', [0, 1, 2, 3, 8])
def test_pdarts_cap_leaves_at_most_the_allowed_skips_keeping_the_strongest(max_skips):
  normal, reduce = skip_heavy_weights()
  derive = lambda n, r: genotype.derive(n, r, OPS)
  geno = derive(normal, reduce)
  skip_edges = lambda g: [(i, src) for i, (op, src) in enumerate(g.normal) if op == 'skip_connect']
  assert len(skip_edges(geno)) == 6
  capped = pdarts.cap_skips(geno, (normal, reduce), OPS, derive, max_skips)
  n_skips = len(skip_edges(capped))
  assert n_skips <= max_skips
  assert n_skips == min(max_skips, 6)  # each removal costs one skip here, no more
  if max_skips >= 6:
    assert capped == geno
  # The skips that survive are the strongest ones of the uncapped cell.
  strength = {e: normal[genotype_edge(geno, e), OPS.index('skip_connect')]
              for e in skip_edges(geno)}
  kept = sorted(strength, key=strength.get, reverse=True)[:n_skips]
  assert set(skip_edges(capped)) == set(kept)
  assert capped.reduce == geno.reduce


def genotype_edge(geno, entry):
  """Reference edge index of genotype entry (position in geno.normal, source)."""
  position, src = entry
  return darts.edge_index(position // 2, src)


# ------------------------------------------------------------------------------- R-DARTS


def test_power_iteration_matches_eigh_including_a_negative_dominant_eigenvalue():
  rng = np.random.default_rng(4)
  q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
  for eigs in ([5.0, 3.0, 1.0, -0.5] + [0.1] * 8, [-6.0, 2.0, 1.5, 0.3] + [0.0] * 8):
    h = q @ np.diag(eigs) @ q.T
    got = rdarts.largest_eigenvalue(lambda v: h @ v, rng.standard_normal(12), iters=500,
                                    tol=1e-13)
    np.testing.assert_allclose(got, np.linalg.eigh(h)[0][-1], rtol=1e-8)


def test_power_iteration_eigenvalue_of_the_val_loss_hessian_matches_eigh(tiny, x64):
  flat, unravel = ravel_pytree(tiny['alphas'])
  val = batch(2)
  loss = lambda f: tiny['loss_fn'](tiny['weights'], unravel(f), tiny['stats'], val, None, 0)[0]
  dense = np.asarray(jax.jit(jax.hessian(loss))(flat))
  np.testing.assert_allclose(dense, dense.T, atol=1e-10)
  want = np.linalg.eigh(dense)[0][-1]
  hvp = jax.jit(rdarts.make_hvp(loss))
  got = rdarts.largest_eigenvalue(lambda v: hvp(flat, jnp.asarray(v)),
                                  np.random.default_rng(0).standard_normal(flat.shape),
                                  iters=2000, tol=1e-12)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert abs(want) > 1e-4


def history(eigenvalues):
  return [{'epoch': i + 1, 'eigenvalue': e} for i, e in enumerate(eigenvalues)]


def test_rdarts_stops_when_the_local_average_eigenvalue_grows_and_returns_k_epochs_back():
  reg = make('rdarts', {'start_epoch': 0})
  flat = [1.0 + 0.01 * (i % 3) for i in range(20)]
  assert reg.should_stop(history(flat), OPS) is None
  rising = [1.0] * 10 + [1.0 * 1.15 ** i for i in range(1, 11)]
  stops = [n for n in range(1, len(rising) + 1)
           if reg.should_stop(history(rising[:n]), OPS) is not None]
  assert stops, 'never fired'
  n = stops[0]
  stop = reg.should_stop(history(rising[:n]), OPS)
  ev = np.asarray(rising[:n])
  # Independently: the mean of the last 5 vs the mean of the 5 ending 5 epochs earlier.
  now, before = ev[-5:].mean(), ev[-10:-5].mean()
  assert before / now < 0.75
  prev = np.asarray(rising[:n - 1])
  assert prev[-10:-5].mean() / prev[-5:].mean() >= 0.75  # not one epoch earlier
  assert stop.rule == 'rdarts' and stop.genotype_epoch == n - 5 - 2  # centre of the early window
  assert make('rdarts', {'early_stop': False}).should_stop(history(rising), OPS) is None
  # start_epoch (the reference's es_start_epoch): no decision on too early windows.
  assert make('rdarts', {'start_epoch': 100}).should_stop(history(rising), OPS) is None


def alpha_record(normal, reduce, skips=0):
  return {'epoch': 0, 'normal': normal.tolist(), 'reduce': reduce.tolist(),
          'normal_cell_skips': skips}


def test_darts_plus_stops_on_two_skips_or_a_stable_ranking():
  reg = make('darts_plus', {'stable_epochs': 3})
  n, r = ALPHAS
  assert reg.should_stop([alpha_record(n, r, skips=1)], OPS) is None
  assert 'criterion 1' in reg.should_stop([alpha_record(n, r, skips=2)], OPS).reason
  # Ranking of the conv ops' alphas unchanged for 3 epochs (alphas scaled and shifted only).
  stable = [alpha_record(n * s + 0.1, r * s, 1) for s in (1.0, 1.1, 1.2, 1.3)]
  assert 'criterion 2' in reg.should_stop(stable, OPS).reason
  assert reg.should_stop(stable[:3], OPS) is None  # only 2 epochs so far
  changing = list(stable)
  swapped = n.copy()
  convs = darts_plus.learnable(OPS)
  swapped[4, convs[0]], swapped[4, convs[1]] = n[4, convs[1]], n[4, convs[0]]
  changing[2] = alpha_record(swapped, r, 1)
  assert reg.should_stop(changing, OPS) is None
  # Ranking changes among the parameter-free ops do not count (only learnable ops).
  pools = n.copy()
  pools[:, [1, 2]] = pools[:, [2, 1]]
  assert reg.should_stop(stable[:3] + [alpha_record(pools * 1.3, r * 1.3, 1)], OPS) is not None
  assert make('darts_plus', {'stable_epochs': 0, 'max_skips': 0}).should_stop(stable, OPS) is None


def test_darts_plus_reads_the_skip_count_the_search_records():
  """Criterion 1 on the record the search writes (its key was once misspelt, so a real search
  never stopped on skips); criterion 2 needs two learnable ops to rank."""
  from dnas.trainers.search import normal_cell_counts
  n, r = ALPHAS
  geno = genotype.derive(n, r, OPS, num_nodes=4)
  counts = normal_cell_counts(geno)
  record = {'epoch': 1.0, 'normal': n.tolist(), 'reduce': r.tolist(), **counts}
  reg = make('darts_plus', {'max_skips': counts['normal_cell_skips']})
  assert counts['normal_cell_skips'] >= 1
  assert 'criterion 1' in reg.should_stop([record], OPS).reason
  assert make('darts_plus', {'max_skips': counts['normal_cell_skips'] + 1}).should_stop(
      [record], OPS) is None
  # R-DARTS' S3 space: sep_conv_3x3 the only conv, its "ranking" cannot change.
  s3 = ('none', 'skip_connect', 'sep_conv_3x3')
  flat = [{'epoch': e, 'normal': np.zeros((14, 3)).tolist(),
           'reduce': np.zeros((14, 3)).tolist(), 'normal_cell_skips': 0} for e in range(12)]
  assert make('darts_plus', {'stable_epochs': 3}).should_stop(flat, s3) is None


# ------------------------------------------------------------------ the weight-step hook


def test_search_step_trains_the_weights_at_the_hooks_alphas_and_keeps_the_clean_ones(tiny, x64):
  """bilevel.search_step(weight_step_alphas=): the alpha update is untouched, the weight step
  runs at the returned alphas (identity hook: same as no hook)."""
  from dnas.state import SearchState
  weight_tx = bilevel.weight_optimizer(learning_rate=0.1)
  alpha_tx = bilevel.alpha_optimizer()
  state = SearchState(step=jnp.zeros((), jnp.int32), weights=tiny['weights'],
                      alphas=tiny['alphas'], batch_stats=tiny['stats'],
                      weight_opt_state=weight_tx.init(tiny['weights']),
                      alpha_opt_state=alpha_tx.init(tiny['alphas']),
                      rng=jax.random.key_data(jax.random.key(0)))
  def shift(alphas, *, key, step, loss_fn, by):
    del key, step, loss_fn
    return jax.tree.map(lambda a: a.at[..., 0].add(by), alphas)

  step = lambda s, hook: bilevel.search_step(s, batch(1), batch(2), loss_fn=tiny['loss_fn'],
                                             weight_tx=weight_tx, alpha_tx=alpha_tx,
                                             weight_step_alphas=hook)
  plain, m_plain = jax.jit(lambda s: step(s, None))(state)
  hooked = jax.jit(lambda s, by: step(s, functools.partial(shift, by=by)))  # one compile
  same, m_same = hooked(state, 0.0)
  moved, m_moved = hooked(state, 2.0)
  for a, b in ((plain, same), (plain, moved)):
    np.testing.assert_array_equal(ravel_pytree(a.alphas)[0], ravel_pytree(b.alphas)[0])
  np.testing.assert_allclose(ravel_pytree(same.weights)[0], ravel_pytree(plain.weights)[0],
                             rtol=1e-12, atol=1e-14)
  assert float(jnp.max(jnp.abs(ravel_pytree(moved.weights)[0] - ravel_pytree(plain.weights)[0]))) > 1e-6
  assert float(m_same['train_loss']) == pytest.approx(float(m_plain['train_loss']), rel=1e-12)
  assert float(m_moved['train_loss']) != pytest.approx(float(m_plain['train_loss']), rel=1e-6)
