"""A float64 search network small enough for finite differences, random batches, and the
warm-up check that several step tests share."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dnas import arch
from dnas.cells import darts

# The bilevel and unrolled tests check the step's algebra, which does not depend on which ops
# the edges hold; they need a weighted op (conv), a weight-free op with batch statistics
# (pool + BN), an identity / FactorizedReduce (skip) and `none`. Half the ops compile in about
# half the time (measured: 13.9 vs 23.7 s for the float64 search step). Each op is checked on
# its own in tests/cells/test_ops.py, and the alpha gradient's finite-difference test keeps all 8.
STEP_OPS = ('none', 'max_pool_3x3', 'skip_connect', 'sep_conv_3x3')


def tiny_model(conv_form: str = 'folded', primitives=STEP_OPS):
  """2 nodes per cell (5 edges), 3 cells (normal, reduce, reduce), C=4, 1 input channel: fast
  enough for float64 FD. The folded conv form has the fewest ops (2.4x fewer than shift), so
  it compiles fastest."""
  model = darts.SearchNetwork(num_classes=3, in_channels=1, channels=4, layers=3, num_nodes=2,
                              multiplier=2, conv_form=conv_form, primitives=primitives,
                              rngs=nnx.Rngs(0))
  graphdef, alphas, stats, weights = arch.split(model)
  to64 = lambda t: jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), t)
  # Alphas away from uniform, so that the softmax Jacobian is not degenerate.
  alphas = jax.tree.map(lambda v: jax.random.normal(jax.random.key(3), v.shape, jnp.float64),
                        alphas)
  return graphdef, alphas, to64(stats), to64(weights)


def batch(seed, n=4):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {'image': jax.random.normal(k1, (n, 8, 8, 1), jnp.float64),
          'label': jax.random.randint(k2, (n,), 0, 3)}


def check_warm_up_step(step, state, train, val, grad_w, lr, wd, clip, momentum=0.9):
  """`step` with update_alphas=False keeps the alphas and their optimizer state bit for bit
  and takes DARTS' weight step of grad_w(w, alpha) at the old alphas, by hand: clip the
  global norm, add L2 decay, heavy-ball momentum on the state's trace, SGD. With
  update_alphas=True (the same compiled step, if the caller traced the flag) the alphas move."""
  frozen, _ = step(state, train, val, update_alphas=jnp.array(False))
  for got, want in zip(jax.tree.leaves(frozen.alphas) + jax.tree.leaves(frozen.alpha_opt_state),
                       jax.tree.leaves(state.alphas) + jax.tree.leaves(state.alpha_opt_state)):
    np.testing.assert_array_equal(got, want)
  g_w = grad_w(state.weights, state.alphas)
  norm = jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(g_w)))
  scale = jnp.minimum(1.0, clip / norm)
  trace = optax.tree.get(state.weight_opt_state, 'trace')
  expect_w = jax.tree.map(lambda w, g, b: w - lr * (momentum * b + g * scale + wd * w),
                          state.weights, g_w, trace)
  for got, want in zip(jax.tree.leaves(frozen.weights), jax.tree.leaves(expect_w)):
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
  moved, _ = step(state, train, val, update_alphas=jnp.array(True))
  assert not np.allclose(jax.tree.leaves(moved.alphas)[0], jax.tree.leaves(state.alphas)[0])
