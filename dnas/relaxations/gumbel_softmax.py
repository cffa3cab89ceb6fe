"""SNAS (Xie et al., 2019): a Gumbel-softmax (concrete) sample of the op weights per edge.

weights = softmax((alphas + g) / tau), g ~ Gumbel(0, 1) per (edge, op): the alphas are the
logits of each edge's op distribution. tau anneals linearly from `tau_max` to `tau_min` over
the search: 1 -> 0.03, the defaults of the authors' code (SNAS-Series `--temp 1
--temp_min 0.03`, its linear Temp_Scheduler, stepped per epoch there and per step here); set
both equal for a constant temperature. Deterministic weights: softmax(alphas).

This is the relaxation only: SNAS also updates the alphas on the training loss with its own
search gradient and a resource cost; here they take DARTS' bilevel step like any other.
"""
import jax

from dnas.relaxations import Relaxation, linear_schedule, register


@register('gumbel_softmax')
class GumbelSoftmax(Relaxation):
  tau_max: float = 1.0
  tau_min: float = 0.03
  total_steps: int | None = None  # the search length, filled in by relaxations.make

  def temperature(self, step):
    return linear_schedule(self.tau_max, self.tau_min, step, self.total_steps, 'gumbel_softmax')

  def weights(self, alphas, *, key, step):
    if key is None:
      return jax.nn.softmax(alphas, axis=-1)
    g = jax.random.gumbel(key, alphas.shape, alphas.dtype)
    return jax.nn.softmax((alphas + g) / self.temperature(step), axis=-1)
