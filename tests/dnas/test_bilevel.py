"""The first-order DARTS step, checked against finite differences and a hand-written update."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dnas import arch, bilevel
from dnas.cells import darts
from dnas.state import SearchState

from tiny_problem import batch, check_warm_up_step, tiny_model  # tests/dnas/tiny_problem.py

pytestmark = pytest.mark.usefixtures('x64')


def initial_state(weights, alphas, stats, weight_tx, alpha_tx, seed):
  """The search state at step 0, both optimizers freshly initialised."""
  return SearchState(step=jnp.zeros((), jnp.int32), weights=weights, alphas=alphas,
                     batch_stats=stats, weight_opt_state=weight_tx.init(weights),
                     alpha_opt_state=alpha_tx.init(alphas),
                     rng=jax.random.key_data(jax.random.key(seed)))


def test_alpha_gradient_matches_central_finite_differences():
  """On the tiny net with all 8 DARTS ops (the step tests below use a smaller op set)."""
  graphdef, alphas, stats, weights = tiny_model(primitives=darts.PRIMITIVES)
  loss_fn = bilevel.classification_loss(graphdef)
  val = batch(1)
  f = lambda a: loss_fn(weights, a, stats, val, None, 0)[0]
  grad = jax.jit(jax.grad(f))(alphas)
  flat, unravel = jax.flatten_util.ravel_pytree(alphas)
  g_flat = jax.flatten_util.ravel_pytree(grad)[0]
  eps = 1e-6
  # Every +-eps perturbation of every alpha in one vmapped call (one compile, one run).
  steps = eps * np.eye(flat.size)
  losses = np.asarray(jax.jit(jax.vmap(lambda x: f(unravel(x))))(
      jnp.concatenate([flat + steps, flat - steps])))
  fd = (losses[:flat.size] - losses[flat.size:]) / (2 * eps)
  assert np.abs(g_flat).max() > 1e-4  # a real, non-vanishing gradient
  np.testing.assert_allclose(g_flat, fd, rtol=1e-5, atol=1e-8)


def test_first_order_step_follows_the_darts_update_rule():
  graphdef, alphas, stats, weights = tiny_model()
  loss_fn = bilevel.classification_loss(graphdef)
  lr, wd, clip, arch_lr, arch_wd = 0.025, 3e-4, 5.0, 3e-4, 1e-3
  weight_tx = bilevel.weight_optimizer(learning_rate=lr, weight_decay=wd, grad_clip=clip)
  alpha_tx = bilevel.alpha_optimizer(learning_rate=arch_lr, weight_decay=arch_wd)
  state = initial_state(weights, alphas, stats, weight_tx, alpha_tx, seed=0)
  step = jax.jit(functools.partial(bilevel.search_step, loss_fn=loss_fn,
                                   weight_tx=weight_tx, alpha_tx=alpha_tx))
  train, val = batch(1), batch(2)
  # update_alphas traced (as the trainer feeds it): one compiled step serves the warm-up too.
  new, metrics = step(state, train, val, update_alphas=jnp.array(True))

  # Alphas: first Adam step on the val-batch gradient (+ L2 decay): m/sqrt(v) = g/|g|.
  g_a = jax.jit(jax.grad(lambda w, a, s: loss_fn(w, a, s, val, None, 0)[0], argnums=1))(
      weights, alphas, stats)
  expect_a = jax.tree.map(lambda a, g: a - arch_lr * (g + arch_wd * a) /
                          (jnp.abs(g + arch_wd * a) + 1e-8), alphas, g_a)
  for got, want in zip(jax.tree.leaves(new.alphas), jax.tree.leaves(expect_a)):
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)

  # Weights: the train-batch gradient at the *new* alphas, clipped, + L2 decay, SGD.
  train_grad = jax.jit(jax.value_and_grad(lambda w, a, s: loss_fn(w, a, s, train, None, 0),
                                          has_aux=True))
  (_, (_, expect_stats)), g_w = train_grad(weights, new.alphas, stats)
  norm = jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(g_w)))
  scale = jnp.minimum(1.0, clip / norm)
  expect_w = jax.tree.map(lambda w, g: w - lr * (g * scale + wd * w), weights, g_w)
  for got, want in zip(jax.tree.leaves(new.weights), jax.tree.leaves(expect_w)):
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
  # BN running averages come from the train batch only.
  for got, want in zip(jax.tree.leaves(new.batch_stats), jax.tree.leaves(expect_stats)):
    np.testing.assert_allclose(got, want, rtol=1e-12)
  np.testing.assert_allclose(metrics['val_loss'], loss_fn(weights, alphas, stats, val, None, 0)[0],
                             rtol=1e-12)
  assert int(new.step) == 1

  # Alphas never see the train batch: another train batch gives the same new alphas,
  # but different weights.
  other, _ = step(state, batch(7), val, update_alphas=jnp.array(True))
  for a, b in zip(jax.tree.leaves(other.alphas), jax.tree.leaves(new.alphas)):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(jax.tree.leaves(other.weights)[0], jax.tree.leaves(new.weights)[0])

  # Architecture warm-up (update_alphas=False) through the same compiled step.
  check_warm_up_step(step, state, train, val, lambda w, a: train_grad(w, a, stats)[1],
                     lr, wd, clip)


def test_cosine_schedule_is_torch_cosine_annealing_per_epoch():
  sched = bilevel.cosine_per_epoch(0.025, 0.001, epochs=50, steps_per_epoch=10)
  for step in (0, 9, 10, 255, 499):
    e = step // 10
    want = 0.001 + (0.025 - 0.001) * (1 + np.cos(np.pi * e / 50)) / 2
    assert float(sched(step)) == pytest.approx(want, rel=1e-6)


def test_shared_pass_step_equals_two_separate_halves_with_a_val_only_term():
  """search_step's first order runs both halves as two passes of one compiled gradient; the
  same step computed half by half (FirstOrder called as a plain alpha-gradient function, the
  pre-shared-pass code path) must give the same state, with a regularizer-like term on the
  alphas that joins the val loss only."""
  graphdef, alphas, stats, weights = tiny_model()
  loss_fn = bilevel.classification_loss(graphdef)
  term = lambda a, step: 0.3 * sum(jnp.sum(jax.nn.logsumexp(x, -1)) for x in jax.tree.leaves(a))
  weight_tx = bilevel.weight_optimizer(learning_rate=0.025)
  alpha_tx = bilevel.alpha_optimizer()
  state = initial_state(weights, alphas, stats, weight_tx, alpha_tx, seed=3)
  first = bilevel.alpha_gradient_fn(1, loss_fn=loss_fn, alpha_loss_term=term)
  halves = lambda *args: first(*args)  # not a FirstOrder: search_step runs separate halves
  kw = dict(loss_fn=loss_fn, weight_tx=weight_tx, alpha_tx=alpha_tx)
  shared = jax.jit(functools.partial(bilevel.search_step, alpha_gradient=first, **kw))
  separate = jax.jit(functools.partial(bilevel.search_step, alpha_gradient=halves, **kw))
  s1, m1 = shared(state, batch(1), batch(2))
  # update_alphas traced, as the trainer feeds it: the same compiled step checks the warm-up.
  s2, m2 = separate(state, batch(1), batch(2), update_alphas=jnp.array(True))
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
  for k in m2:
    np.testing.assert_allclose(m1[k], m2[k], rtol=1e-10, err_msg=k)
  # The term is in the val loss: the logged val loss exceeds the plain loss by the term.
  plain = bilevel.classification_loss(graphdef)(weights, alphas, stats, batch(2), None, 0)[0]
  np.testing.assert_allclose(m1['val_loss'] - plain, term(alphas, 0), rtol=1e-6)

  # Architecture warm-up on the pass-by-pass path (update_alphas=False).
  grad_w = jax.jit(jax.grad(lambda w, a: loss_fn(w, a, stats, batch(1), None, 0)[0]))
  check_warm_up_step(separate, state, batch(1), batch(2), grad_w, 0.025, 3e-4, 5.0)
