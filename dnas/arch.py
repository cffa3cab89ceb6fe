"""Architecture parameters as their own variable type.

`ArchParam` subclasses `nnx.Param` so that `nnx.split(model, ArchParam, nnx.BatchStat,
nnx.Param)` separates the alphas from the weights: the bilevel loop differentiates and
optimises the two groups separately, on different data.
"""
from flax import nnx

ARCH = 'arch'


class ArchParam(nnx.Param):
  """An architecture parameter (alpha). Never updated by the weight optimizer."""


def split(model: nnx.Module):
  """(graphdef, alphas, batch_stats, weights): the four parts the bilevel math needs."""
  return nnx.split(model, ArchParam, nnx.BatchStat, nnx.Param)


def merge(graphdef, alphas, batch_stats, weights) -> nnx.Module:
  """A fresh module; `copy=True` makes new Variables in the current trace, so BN can update
  its statistics inside jax.grad / jax.jit."""
  return nnx.merge(graphdef, alphas, batch_stats, weights, copy=True)
