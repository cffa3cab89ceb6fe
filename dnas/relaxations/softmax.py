"""DARTS (Liu et al., 2019): a softmax over the candidate ops of every edge.

`temperature` divides the alphas first; the paper's is 1.
"""
import jax

from dnas.relaxations import Relaxation, register


@register('softmax')
class Softmax(Relaxation):
  temperature: float = 1.0

  def weights(self, alphas, *, key, step):
    del key, step  # deterministic, unscheduled
    return jax.nn.softmax(alphas / self.temperature, axis=-1)
