"""A float64 search network small enough for finite differences, and random batches."""
import jax
import jax.numpy as jnp
from flax import nnx

from dnas import arch
from dnas.cells import darts


def tiny_model(conv_form: str = 'folded'):
  """2 nodes per cell (5 edges), 3 cells, C=4, 1 input channel: fast enough for float64 FD.
  The folded conv form has the fewest ops (2.4x fewer than shift), so it compiles fastest."""
  model = darts.SearchNetwork(num_classes=3, in_channels=1, channels=4, layers=3, num_nodes=2,
                              multiplier=2, conv_form=conv_form, rngs=nnx.Rngs(0))
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
