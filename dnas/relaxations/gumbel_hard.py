"""GDAS (Dong & Yang, 2019): one op sampled per edge, straight-through gradient.

Forward: the one-hot of argmax(alphas + g), g ~ Gumbel(0, 1): an op drawn from
softmax(alphas). Backward: the gradient of the soft sample p = softmax((alphas + g) / tau)
(weights = one_hot + p - stop_gradient(p)). tau falls linearly from 10 to 0.1 over the
search (the paper; its code steps it per epoch, here per step). Deterministic weights and the
genotype: softmax(alphas), as GDAS reads its cells off.

Cost: GDAS computes only the sampled op of each edge. This supernet computes the ops of all
edges leaving a state together as fused convolutions (cells/darts.py), so every op still runs
and a step costs what a softmax step costs (docs/design.md has the measurement). The gradient
is the standard straight-through one, dL/dw_k = <dL/dout, op_k(x)> for every op k, which
needs those outputs anyway; GDAS's code instead adds the unsampled weights as constants
(w_k + sampled op), so their gradient is the sum of dL/dout and no other op has to run.
"""
import jax
import jax.numpy as jnp

from dnas.relaxations import Relaxation, linear_schedule, register


@register('gumbel_hard')
class GumbelHard(Relaxation):
  tau_max: float = 10.0
  tau_min: float = 0.1
  total_steps: int | None = None  # the search length, filled in by relaxations.make

  def temperature(self, step):
    return linear_schedule(self.tau_max, self.tau_min, step, self.total_steps, 'gumbel_hard')

  def weights(self, alphas, *, key, step):
    if key is None:
      return jax.nn.softmax(alphas, axis=-1)
    g = jax.random.gumbel(key, alphas.shape, alphas.dtype)
    soft = jax.nn.softmax((alphas + g) / self.temperature(step), axis=-1)
    hard = jax.nn.one_hot(jnp.argmax(alphas + g, axis=-1), alphas.shape[-1],
                          dtype=alphas.dtype)
    return hard + soft - jax.lax.stop_gradient(soft)
