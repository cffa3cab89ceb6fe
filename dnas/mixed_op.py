"""The mixed operation: a weighted sum of candidate-op outputs.

Space-agnostic. A search space computes its candidate ops (in whatever fused form is
fastest) and hands their outputs here together with the relaxed op weights. Ops whose output
is identically zero (`none`) are simply left out: their contribution and its derivative are
zero, and their weight still takes part in the relaxation that normalises the others.
"""
import functools
from typing import Mapping

import jax
import jax.numpy as jnp


# Jitted: traced once per shape (the comment above cells/ops.py `_normalize` says why).
@functools.partial(jax.jit, static_argnames='edge_axis')
def weighted_sum(outputs: Mapping[int, jnp.ndarray], weights: jnp.ndarray,
                 edge_axis: int | None = None) -> jnp.ndarray:
  """sum_k weights[..., k] * outputs[k].

  Args:
    outputs: op index -> output. With `edge_axis` set, outputs hold a batch of edges on
      that axis (size E) or broadcast over it (size 1, e.g. a pooling shared by the edges).
    weights: (num_ops,) for one edge, or (E, num_ops) with `edge_axis` set.
    edge_axis: axis of the outputs that indexes edges; None for a single edge.
  """
  total = None
  for k, out in outputs.items():
    w = weights[..., k]
    if edge_axis is not None:
      shape = [1] * out.ndim
      shape[edge_axis] = w.shape[0]
      w = w.reshape(shape)
    term = w * out
    total = term if total is None else total + term
  return total
