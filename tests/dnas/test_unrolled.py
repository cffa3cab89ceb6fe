"""Second-order DARTS: the unrolled alpha gradient against autodiff through the whole
unrolled expression, the finite-difference HVP against the exact one, xi = 0 against first
order, and the order / hvp configuration errors."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dnas import bilevel, unrolled
from dnas.state import SearchState

from tiny_problem import batch, check_warm_up_step, tiny_model  # tests/dnas/tiny_problem.py

# One xdist worker (--dist loadgroup) runs these tests, so the compiled gradients are shared.
pytestmark = [pytest.mark.usefixtures('x64'), pytest.mark.xdist_group('unrolled')]

LR, MOMENTUM, WD = 0.1, 0.9, 3e-4


@pytest.fixture(scope='module')
def problem():
  with jax.enable_x64(True):
    graphdef, alphas, stats, weights = tiny_model()
    loss_fn = bilevel.classification_loss(graphdef)
    weight_tx = bilevel.weight_optimizer(learning_rate=LR, momentum=MOMENTUM, weight_decay=WD)
    alpha_tx = bilevel.alpha_optimizer()
    # A non-zero momentum buffer, so that the unrolled step's momentum term is exercised.
    rng = np.random.default_rng(5)  # drawn on the host: no per-shape compiles of a sampler
    buf = jax.tree.map(lambda w: jnp.asarray(0.1 * rng.standard_normal(w.shape), w.dtype),
                       weights)
    opt_state = optax.tree.set(weight_tx.init(weights), trace=buf)
    state = SearchState(step=jnp.zeros((), jnp.int32), weights=weights, alphas=alphas,
                        batch_stats=stats, weight_opt_state=opt_state,
                        alpha_opt_state=alpha_tx.init(alphas),
                        rng=jax.random.key_data(jax.random.key(0)))
    return dict(loss_fn=loss_fn, state=state, buf=buf, weight_tx=weight_tx, alpha_tx=alpha_tx,
                train=batch(1), val=batch(2), key=jax.random.key(11))


@functools.lru_cache
def compiled_unrolled_grad(loss_fn, hvp):
  """xi and the FD radius are traced arguments: one compile serves every value."""
  return jax.jit(lambda state, train, val, key, xi, radius: unrolled.alpha_gradient(
      state, train, val, key, loss_fn=loss_fn, xi=xi, momentum=MOMENTUM, weight_decay=WD,
      hvp=hvp, fd_radius=radius)[0])


@functools.lru_cache
def compiled_first_order_grad(loss_fn):
  return jax.jit(lambda state, val, key: bilevel.first_order_alpha_gradient(
      state, None, val, key, loss_fn=loss_fn)[0])


def first_order_grad(p):
  """The first-order alpha gradient with the val key the unrolled gradient uses."""
  return compiled_first_order_grad(p['loss_fn'])(p['state'], p['val'],
                                                 jax.random.split(p['key'])[1])


def unrolled_grad(p, hvp, xi=LR, fd_radius=unrolled.FD_RADIUS):
  return compiled_unrolled_grad(p['loss_fn'], hvp)(p['state'], p['train'], p['val'], p['key'],
                                                   xi, fd_radius)


def through_the_update(p, xi=LR):
  """d/d alpha of L_val(w'(alpha), alpha), differentiating the virtual step itself
  (reverse over reverse): independent of the HVP code under test."""
  loss_fn, s = p['loss_fn'], p['state']
  key_train, key_val = jax.random.split(p['key'])

  def val_after_step(alphas):
    g = jax.grad(lambda w: loss_fn(w, alphas, s.batch_stats, p['train'], key_train, 0)[0])(
        s.weights)
    w1 = jax.tree.map(lambda w, g, b: w - xi * (MOMENTUM * b + g + WD * w), s.weights, g, p['buf'])
    return loss_fn(w1, alphas, s.batch_stats, p['val'], key_val, 0)[0]
  return jax.jit(jax.grad(val_after_step))(s.alphas)


def flat(tree):
  return np.asarray(jax.flatten_util.ravel_pytree(tree)[0])


def test_exact_hvp_gradient_equals_autodiff_through_the_unrolled_step(problem):
  want = flat(through_the_update(problem))
  got = flat(unrolled_grad(problem, 'exact'))
  first = flat(first_order_grad(problem))
  # The second-order term is not negligible here, so this comparison can fail.
  assert np.linalg.norm(want - first) > 1e-3 * np.linalg.norm(want)
  np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-8 * np.abs(want).max())


def test_finite_difference_hvp_formula_on_a_smooth_function(x64):
  """Central differences err by eps^2 / 6 * d^3/dt^3 grad_alpha L(w + t v): checked against
  that bound on a smooth function with a hand-derived mixed Hessian, and halving eps cuts the
  error 4x."""
  w = jnp.linspace(-1.0, 1.0, 7)
  a = jnp.linspace(0.5, 2.0, 7)
  v = jnp.cos(jnp.arange(7.0))
  alpha_grad_at = lambda w: jnp.sin(w) + a * w ** 2        # of L = sum(a sin w + a^2 w^2 / 2)
  exact = jnp.cos(w) * v + 2 * a * w * v                    # d/dt at t = 0 of grad(w + t v)
  np.testing.assert_allclose(unrolled.mixed_hvp_exact(alpha_grad_at, w, v), exact, rtol=1e-14)
  errors = []
  for radius in (0.1, 0.05, 0.025):
    eps = radius / np.linalg.norm(v)
    fd = unrolled.mixed_hvp_finite_difference(alpha_grad_at, w, v, radius)
    bound = eps ** 2 / 6 * np.abs(v) ** 3 * 1.0001             # |d^3 sin| <= 1; a w^2 is exact
    err = np.abs(np.asarray(fd - exact))
    assert np.all(err <= bound) and err.max() > 0.1 * bound.max()
    errors.append(err.max())
  for coarse, fine in zip(errors, errors[1:]):
    assert coarse / fine == pytest.approx(4, rel=0.01)


def test_finite_difference_hvp_on_the_network(problem):
  """On the search network FD matches the exact product only while w +- eps v stays in one
  linear piece of the ReLU / max-pool network. Measured on this tiny net (4 images, the
  STEP_OPS): relative error 1.4 at the paper's radius 0.01, 1.8 at 1e-3 and 0.73 at 1e-4 (a
  gradient jump lies that close to w), 1.9e-9 at 1e-5, 5.8e-10 at 1e-6, 1.5e-8 at 1e-7
  (float64 rounding, ~1e-16 / eps, takes over). So the
  implementation is checked where FD is accurate; the paper's radius is accurate only where
  batches average many kinks, and `exact` has none of this error."""
  exact = flat(unrolled_grad(problem, 'exact'))
  errors = {r: np.linalg.norm(flat(unrolled_grad(problem, 'finite_difference', fd_radius=r))
                              - exact) / np.linalg.norm(exact)
            for r in (1e-5, 1e-6)}
  assert max(errors.values()) < 1e-7, errors


def test_xi_zero_is_the_first_order_gradient(problem):
  first = flat(first_order_grad(problem))
  for hvp in unrolled.HVP_MODES:
    np.testing.assert_allclose(flat(unrolled_grad(problem, hvp, xi=0.0)), first, rtol=1e-12,
                               atol=1e-15)


def test_shared_pass_exact_step_equals_the_exact_unrolled_gradient(problem):
  """With the exact HVP, search_step runs four passes of one compiled gradient, the third a
  forward-over-reverse `lax.cond` branch of the loop body (dnas/passes.py). Its Adam step on
  the alphas must be the one taken from `unrolled.alpha_gradient` (pass by pass, JAX's own
  conv rules; checked against autodiff through the virtual step above), its train loss the
  network's at (w, alpha'). (The weight step is the same code as in the finite-difference
  test above.)"""
  p, xi = problem, 0.05
  state = p['state']
  step = jax.jit(functools.partial(
      bilevel.search_step, loss_fn=p['loss_fn'], weight_tx=p['weight_tx'],
      alpha_tx=p['alpha_tx'], alpha_gradient=bilevel.alpha_gradient_fn(
          2, loss_fn=p['loss_fn'], hvp='exact', xi=xi)))
  new_state, metrics = step(state, p['train'], p['val'])

  _, key_alpha, key_weight = jax.random.split(state.rng, 3)
  grads = compiled_unrolled_grad(p['loss_fn'], 'exact')(
      state, p['train'], p['val'], jax.random.wrap_key_data(key_alpha), xi, unrolled.FD_RADIUS)
  updates, _ = p['alpha_tx'].update(grads, state.alpha_opt_state, state.alphas)
  want_alphas = optax.apply_updates(state.alphas, updates)
  assert np.abs(flat(want_alphas) - flat(state.alphas)).max() > 1e-5  # the alphas moved
  np.testing.assert_allclose(flat(new_state.alphas), flat(want_alphas), rtol=1e-8, atol=1e-12)
  np.testing.assert_allclose(metrics['alpha_grad_norm'], optax.tree.norm(grads), rtol=1e-8)

  loss = jax.jit(lambda w, a, batch, key: p['loss_fn'](w, a, state.batch_stats, batch, key,
                                                       state.step)[0])
  np.testing.assert_allclose(metrics['train_loss'], loss(
      state.weights, want_alphas, p['train'], key_weight), rtol=1e-10)
  assert float(metrics['hvp_norm']) > 0
  # The HVP is a branch of the shared loop, not a graph of its own: one loop, and fewer convs
  # than the pass-by-pass exact step's (341 here; the shared program 193).
  text = step.lower(state, p['train'], p['val']).as_text()
  assert 'stablehlo.case' in text and text.count('stablehlo.convolution') < 250


def test_order_and_hvp_combinations():
  loss_fn = lambda *a: None
  with pytest.raises(ValueError, match='only apply to second order'):
    bilevel.alpha_gradient_fn(1, loss_fn=loss_fn, hvp='exact')
  with pytest.raises(ValueError, match="unknown bilevel.hvp 'hessian'; valid: finite_difference, exact"):
    bilevel.alpha_gradient_fn(2, loss_fn=loss_fn, hvp='hessian', xi=0.1)
  with pytest.raises(ValueError, match='must be 1 .* or 2'):
    bilevel.alpha_gradient_fn(3, loss_fn=loss_fn)


def test_shared_pass_finite_difference_step_equals_the_pass_by_pass_step(problem):
  """search_step runs the finite-difference second-order step as five passes of one compiled
  gradient (dnas/passes.py); the same step with the unrolled gradient called as a plain
  function (each pass its own call site) must give the same state and metrics."""
  p = problem
  unrolled_grad = bilevel.alpha_gradient_fn(2, loss_fn=p['loss_fn'], hvp='finite_difference',
                                            xi=0.05, alpha_loss_term=lambda a, s: 0.1 * sum(
                                                jnp.sum(x ** 2) for x in jax.tree.leaves(a)))
  state = p['state']  # with a non-zero momentum buffer
  kw = dict(loss_fn=p['loss_fn'], weight_tx=p['weight_tx'], alpha_tx=p['alpha_tx'])
  shared = jax.jit(functools.partial(bilevel.search_step, alpha_gradient=unrolled_grad, **kw))
  separate = jax.jit(functools.partial(bilevel.search_step,
                                       alpha_gradient=lambda *a: unrolled_grad(*a), **kw))
  s1, s2 = state, state
  for _ in range(2):
    # update_alphas traced, as the trainer feeds it: the warm-up check below reuses the compile.
    s1, m1 = shared(s1, p['train'], p['val'], update_alphas=jnp.array(True))
    s2, m2 = separate(s2, p['train'], p['val'])
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
    np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)
  for k in m2:
    np.testing.assert_allclose(m1[k], m2[k], rtol=1e-8, err_msg=k)
  assert float(m1['hvp_norm']) > 0
  # One compiled gradient serves the passes, so the program holds fewer convs than pass by
  # pass (here 74 vs 302): the shared path ran.
  convs = [f.lower(state, p['train'], p['val']).as_text().count('stablehlo.convolution')
           for f in (shared, separate)]
  assert convs[0] < 0.5 * convs[1], convs

  # Architecture warm-up (update_alphas=False) on the unrolled passes: the weights take the
  # momentum SGD step at the unchanged alphas, from the state's non-zero momentum buffer.
  grad_w = jax.jit(jax.grad(lambda w, a: p['loss_fn'](w, a, state.batch_stats, p['train'],
                                                      None, 0)[0]))
  check_warm_up_step(shared, state, p['train'], p['val'], grad_w, LR, WD, clip=5.0,
                     momentum=MOMENTUM)
