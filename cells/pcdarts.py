"""PC-DARTS (Xu et al., ICLR 2020): partial channel connections and edge normalisation.

As yuhuixu1993/PC-DARTS `model_search.py`, for any search space built of fan-out mixed ops:

* Partial channels (`PartialChannels`): a mixed op sends only the first C/K channels of its
  input through the candidate ops; the other C - C/K bypass them (max-pooled 2x2, stride 2,
  on a stride-2 edge), are concatenated after the ops' output, and the result is
  channel-shuffled with K groups, so that the next edge works on another slice. The ops hold
  1/K of the channels: K times less memory and (roughly) K^2 times fewer conv FLOPs, which
  is what lets the paper search at batch 256.
* Edge normalisation (`node_softmax`): every edge's output is scaled by a softmax, over the
  edges entering the same node, of one parameter per edge (beta, an ArchParam trained with the
  alphas). It damps the noise that sampling channels adds to the choice of edges; the genotype
  ranks edges by op weight x edge weight.

Fan-out: all E edges leaving a source read the same input, so they share one channel split:
their ops run together as one fan-out mixed op on C/K channels, and the bypass (pooled and
shuffled) is computed once per source and broadcast over the edges.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def check_partial_channels(k, channels: Sequence[int], where: str = 'the supernet') -> int:
  """K as an int >= 1 that divides every cell's channel count; else a clear error."""
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f'partial_channels must be an integer K >= 1 (1: off, 4: PC-DARTS), '
                     f'got {k!r}')
  bad = sorted({c for c in channels if c % k})
  if bad:
    raise ValueError(f'partial_channels K={k} must divide the channel count of every cell of '
                     f'{where}, but {bad} is not divisible by {k}: choose channels that are a '
                     f'multiple of {k}, or another K')
  return k


def channel_shuffle(x: jnp.ndarray, groups: int) -> jnp.ndarray:
  """ShuffleNet's channel shuffle on the last axis (the reference's `channel_shuffle` in
  NHWC): view the C channels as (groups, C/groups), transpose, flatten. Output channel
  j * groups + g is input channel g * (C/groups) + j."""
  c = x.shape[-1]
  if c % groups:
    raise ValueError(f'channel_shuffle: {c} channels do not split into {groups} groups')
  y = x.reshape(x.shape[:-1] + (groups, c // groups))
  return jnp.swapaxes(y, -1, -2).reshape(x.shape)


def node_softmax(betas: jnp.ndarray, num_inputs: int, num_nodes: int) -> jnp.ndarray:
  """Edge weights: softmax of the betas over the edges entering each node.

  betas (num_edges,), edges numbered node by node (node i has num_inputs + i incoming
  edges, consecutive), as DARTS and NAS-Bench-201 number them."""
  sizes = [num_inputs + i for i in range(num_nodes)]
  if betas.shape != (sum(sizes),):
    raise ValueError(f'betas have shape {betas.shape}; {num_nodes} nodes with {num_inputs} '
                     f'inputs need ({sum(sizes)},)')
  parts, start = [], 0
  for n in sizes:
    parts.append(jax.nn.softmax(betas[start:start + n]))
    start += n
  return jnp.concatenate(parts)


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
  """nn.MaxPool2d(2, 2) over (B,H,W,...)."""
  window = (1, 2, 2) + (1,) * (x.ndim - 3)
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, 'VALID')


class PartialChannels(nnx.Module):
  """Wraps a fan-out mixed op built for C/K channels into PC-DARTS' partial-channel op.

  `mixed_op(h_part, weights, *args)` -> (B,H',W',E,C/K) for E edges; this returns
  (B,H',W',E,C): per edge, channel_shuffle(concat(op output, bypass), K). The bypass is the
  same on every edge, so the concat + shuffle is written as an interleave: op channel j goes
  to output channel j*K, bypass channel (g-1)*(C/K) + j to j*K + g (g = 1..K-1).
  """

  def __init__(self, mixed_op: nnx.Module, k: int, stride: int):
    self.mixed_op, self.k, self.stride = mixed_op, k, stride

  def __call__(self, h, weights, *args, **kwargs):
    c = h.shape[-1]
    if c % self.k:
      raise ValueError(f'partial_channels K={self.k} does not divide the {c} channels of the '
                       f'mixed-op input: choose channels that are a multiple of {self.k}')
    part = c // self.k
    out = self.mixed_op(h[..., :part], weights, *args, **kwargs)  # (B,H',W',E,C/K)
    bypass = h[..., part:]
    if self.stride == 2:
      if h.shape[1] % 2 or h.shape[2] % 2:
        raise ValueError(f"PC-DARTS' 2x2 max pool of the bypassed channels on a reduction "
                         f'edge needs an even feature map, got {h.shape[1]}x{h.shape[2]}: '
                         f'use images whose side is divisible by 4')
      bypass = max_pool_2x2(bypass)
    # (B,H',W',K-1,C/K) -> (B,H',W',1,C/K,K-1): bypass group g-1, channel j at [j, g-1].
    bypass = jnp.swapaxes(bypass.reshape(bypass.shape[:3] + (self.k - 1, part)), -1, -2)
    bypass = jnp.broadcast_to(bypass[..., None, :, :], out.shape + (self.k - 1,))
    y = jnp.concatenate([out[..., None], bypass], axis=-1)  # (B,H',W',E,C/K,K)
    return y.reshape(out.shape[:-1] + (c,))
