"""DARTS (Liu et al., 2019): a softmax over the candidate ops of every edge."""
import jax

from dnas.relaxations import register


@register('softmax')
def softmax(alphas, *, key=None, step=None, temperature: float = 1.0):
  del key, step  # deterministic, unscheduled
  return jax.nn.softmax(alphas / temperature, axis=-1)
