"""The DARTS CNN search space (Liu et al., 2019), as quark0/darts `model_search.py` builds it.

A cell has 2 inputs and `num_nodes` (4) intermediate nodes; node i sums one mixed op over each
earlier state, giving 2+3+4+5 = 14 edges; the cell outputs the intermediate nodes
concatenated. Reduction cells (at 1/3 and 2/3 depth) use stride 2 on the edges from the
inputs and double the channels. Search BNs have no affine parameters; the stem's BN has.

Edges are numbered as in the reference: node i's edges come after all of node i-1's, and
within a node by source state. Internally the edges are grouped by *source* (`FanOutMixedOp`),
so every op that reads a state is computed once for all the edges leaving it
(see ops.py); `edges_from(source)` holds the mapping to the reference numbering.

PC-DARTS (cells/pcdarts.py) is two switches of `SearchNetwork`: `partial_channels=K` runs each
source's fan-out mixed op on C/K channels inside `pcdarts.PartialChannels`, and
`edge_normalization=True` adds `betas_normal` / `betas_reduce` (ArchParams, (14,)) whose
per-node softmax scales every edge's output and the genotype's edge ranking.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas import relaxations
from dnas.arch import ArchParam
from dnas.regularizers import AUX_SKIP, SKIP_DROPOUT
from dnas.mixed_op import weighted_sum
from dnas.cells import ops, pcdarts

PRIMITIVES = ('none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3',
              'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5')
SPACE = 'darts'


def num_edges(num_nodes: int = 4) -> int:
  return sum(2 + i for i in range(num_nodes))


def edge_index(node: int, source: int) -> int:
  """Reference edge number of the edge source -> intermediate node `node` (0-based)."""
  return sum(2 + i for i in range(node)) + source


def edges_from(source: int, num_nodes: int = 4) -> list[tuple[int, int]]:
  """(edge index, target node) of every edge leaving state `source`, by target node."""
  first = max(0, source - 1)
  return [(edge_index(node, source), node) for node in range(first, num_nodes)]


def check_primitives(primitives: Sequence[str]) -> tuple[str, ...]:
  """A candidate op list for the DARTS supernet: DARTS ops, each once (a repeated op would
  get two alphas on one edge: e.g. an absl tuple override given twice concatenates)."""
  primitives = tuple(primitives)
  unknown = [p for p in primitives if p not in PRIMITIVES]
  if unknown or not primitives:
    raise ValueError(f'unknown DARTS op(s) {unknown}; valid ops: {", ".join(PRIMITIVES)}')
  if len(set(primitives)) != len(primitives):
    raise ValueError(f'DARTS op list {list(primitives)} repeats an op; list each once')
  return primitives


class FanOutMixedOp(nnx.Module):
  """The mixed ops of all E edges that leave one state, computed together.

  Returns (B,H',W',E,C): edge e's weighted sum of every candidate op. Pooling + its
  weight-free BN give the same result on every edge of a source (same input, no parameters),
  so they are computed once and broadcast; the reference computes E identical copies.
  """

  def __init__(self, c: int, edges: int, stride: int, primitives: Sequence[str],
               form: str, rngs: nnx.Rngs, aux_skip: bool = False, aux_rngs: nnx.Rngs | None = None):
    self.stride = stride
    self.edges = edges
    self.primitives = tuple(primitives)
    has = set(primitives)
    self.max_bn = ops.batch_norm(c, rngs) if 'max_pool_3x3' in has else None
    self.avg_bn = ops.batch_norm(c, rngs) if 'avg_pool_3x3' in has else None
    self.reduce = (ops.FactorizedReduce(c, c, edges, rngs)
                   if stride == 2 and 'skip_connect' in has else None)
    self.convs = nnx.Dict()
    for name, make in (
        ('sep_conv_3x3', lambda: ops.SepConvFan(c, edges, 3, stride, (form, form), rngs)),
        ('sep_conv_5x5', lambda: ops.SepConvFan(c, edges, 5, stride, (form, form), rngs)),
        ('dil_conv_3x3', lambda: ops.DilConvFan(c, edges, 3, stride, 2, form, rngs)),
        ('dil_conv_5x5', lambda: ops.DilConvFan(c, edges, 5, stride, 2, form, rngs))):
      if name in has:
        self.convs[name] = make()
    # DARTS-'s auxiliary skip on stride-2 edges: a FactorizedReduce of its own, drawn from a
    # separate stream so that the rest of the supernet's initialisation is unchanged.
    self.aux_reduce = (ops.FactorizedReduce(c, c, edges, aux_rngs)
                       if aux_skip and stride == 2 else None)

  def __call__(self, h, weights, train: bool, edge_mods=None, key=None):
    """h (B,H,W,C) the source state; weights (E, len(primitives)) relaxed op weights.

    `edge_mods` (regularizers, dnas/regularizers): {'aux_skip': beta} adds beta * skip(h) to
    every edge's output (DARTS-); {'skip_dropout': p} drops identity skip outputs with rate
    p, per edge, which needs `key` (P-DARTS)."""
    edge_mods = edge_mods or {}
    relu_h = jax.nn.relu(h)
    outputs = {}
    for k, name in enumerate(self.primitives):
      if name == 'none':
        continue  # zero output: contributes nothing, its weight still normalises the rest
      if name == 'max_pool_3x3':
        out = self.max_bn(ops.max_pool_3x3(h, self.stride), train)
        out = out[..., None, :]
      elif name == 'avg_pool_3x3':
        out = self.avg_bn(ops.avg_pool_3x3(h, self.stride), train)
        out = out[..., None, :]
      elif name == 'skip_connect':
        out = h[..., None, :] if self.stride == 1 else self.reduce(relu_h, train)
        rate = edge_mods.get(SKIP_DROPOUT)
        if rate is not None and self.stride == 1 and train and key is not None:
          out = skip_dropout(out, rate, key, self.edges)
      else:
        out = self.convs[name](relu_h, train)
      outputs[k] = out
    total = weighted_sum(outputs, weights, edge_axis=-2)
    beta = edge_mods.get(AUX_SKIP)
    if beta is not None:
      skip = h[..., None, :] if self.stride == 1 else self.aux_reduce(relu_h, train)
      total = total + beta * skip
    return total


def skip_dropout(out, rate, key, edges: int):
  """Elementwise dropout of an identity skip output (B,H,W,1,C), independently per edge
  (-> (B,H,W,E,C)), rescaled by 1/(1-rate) as torch's nn.Dropout."""
  shape = out.shape[:-2] + (edges, out.shape[-1])
  keep = jax.random.bernoulli(key, 1.0 - rate, shape)
  return jnp.where(keep, out / (1.0 - rate), 0.0).astype(out.dtype)


class SearchCell(nnx.Module):
  """A DARTS search cell: preprocess both inputs, 4 nodes of mixed ops, concat the nodes."""

  def __init__(self, c_prev_prev: int, c_prev: int, c: int, reduction: bool,
               reduction_prev: bool, primitives: Sequence[str], num_nodes: int,
               multiplier: int, forms: dict, rngs: nnx.Rngs, aux_skip: bool = False,
               aux_rngs: nnx.Rngs | None = None, partial_channels: int = 1):
    self.reduction = reduction
    self.num_nodes, self.multiplier = num_nodes, multiplier
    self.preprocess0 = (ops.FactorizedReduce(c_prev_prev, c, 1, rngs) if reduction_prev
                        else ops.ReLUConvBN(c_prev_prev, c, rngs))
    self.preprocess1 = ops.ReLUConvBN(c_prev, c, rngs)
    k = partial_channels

    def mixed_op(source):
      stride = 2 if reduction and source < 2 else 1
      op = FanOutMixedOp(c // k, len(edges_from(source, num_nodes)), stride, primitives,
                         forms[c], rngs, aux_skip, aux_rngs)
      return op if k == 1 else pcdarts.PartialChannels(op, k, stride)
    self.fan_out = nnx.List([mixed_op(s) for s in range(num_nodes + 1)])

  def __call__(self, s0, s1, weights, train: bool, edge_mods=None, key=None,
               edge_weights=None):
    """weights: (num_edges, num_ops) in the reference's edge order; edge_mods and key: see
    FanOutMixedOp; edge_weights (num_edges,) scale each edge's output (PC-DARTS)."""
    if isinstance(self.preprocess0, ops.FactorizedReduce):
      s0 = self.preprocess0(jax.nn.relu(s0), train)[..., 0, :]
    else:
      s0 = self.preprocess0(s0, train)
    states = [ops.materialize(s0), ops.materialize(self.preprocess1(s1, train))]
    node_inputs = [[] for _ in range(self.num_nodes)]
    for source in range(self.num_nodes + 1):
      if source >= 2:  # every edge into this node has been computed: the node is ready
        states.append(ops.materialize(sum(node_inputs[source - 2])))
      edges = edges_from(source, self.num_nodes)
      index = np.array([e for e, _ in edges])
      out = self.fan_out[source](states[source], weights[index], train,
                                 edge_mods, None if key is None else jax.random.fold_in(key, source))
      if edge_weights is not None:
        out = out * edge_weights[index][:, None]
      for i, (_, node) in enumerate(edges):
        node_inputs[node].append(out[..., i, :])
    states.append(ops.materialize(sum(node_inputs[-1])))
    return jnp.concatenate(states[-self.multiplier:], axis=-1)


class SearchNetwork(nnx.Module):
  """The DARTS supernet: stem (3C), `layers` cells, global pool, linear classifier.

  `alphas_normal` / `alphas_reduce` are `ArchParam`s, (14, num_ops) each, initialised to
  1e-3 * N(0, 1) as in the reference. PC-DARTS (cells/pcdarts.py): `partial_channels` K > 1
  sends C/K channels of every edge through the ops; `edge_normalization` adds
  `betas_normal` / `betas_reduce` (14,), initialised as the alphas and drawn after them.
  """

  def __init__(self, *, num_classes: int, in_channels: int = 3, channels: int = 16,
               layers: int = 8, primitives: Sequence[str] = PRIMITIVES, num_nodes: int = 4,
               multiplier: int = 4, stem_multiplier: int = 3,
               relaxation: str | relaxations.Relaxation = 'softmax', conv_form: str = 'auto',
               regularizers=None, partial_channels: int = 1, edge_normalization: bool = False,
               rngs: nnx.Rngs):
    self.primitives = check_primitives(primitives)
    # Every cell has channels, 2 or 4 x channels: K must divide the smallest.
    pcdarts.check_partial_channels(partial_channels, [channels], 'the DARTS supernet (C)')
    if not isinstance(edge_normalization, bool):
      raise ValueError(f'edge_normalization must be True or False, got {edge_normalization!r}')
    self.num_nodes = num_nodes
    # Regularizers that modify edges (dnas/regularizers: DARTS-, P-DARTS) are static data of
    # the model, read every forward pass with the step; the others never reach the network.
    kinds = regularizers.edge_kinds if regularizers is not None else frozenset()
    unknown = sorted(kinds - {AUX_SKIP, SKIP_DROPOUT})
    if unknown:
      raise ValueError(f'the DARTS space has no edge modification(s) {unknown}; it knows '
                       f'{AUX_SKIP}, {SKIP_DROPOUT}')
    self.edge_mods = regularizers if kinds else None
    aux_skip = AUX_SKIP in kinds
    # Own stream (the params key folded with a constant, the main stream untouched): the
    # supernet's other weights start as without the auxiliary skip.
    aux_rngs = nnx.Rngs(jax.random.fold_in(rngs.params.key[...], 0xA5)) if aux_skip else None
    # A name takes the paper's defaults; `relaxations.make` sets hyperparameters / schedule.
    self.relaxation = (relaxations.make(relaxation) if isinstance(relaxation, str)
                       else relaxation)
    if conv_form != 'auto' and conv_form not in ops.FORMS:
      raise ValueError(f'unknown conv_form {conv_form!r}; valid: auto, {", ".join(ops.FORMS)}')
    c_curr = stem_multiplier * channels
    self.stem_w = ops.param(rngs, (3, 3, in_channels, c_curr), 9 * in_channels)
    self.stem_bn = ops.batch_norm(c_curr, rngs, affine=True)
    c_pp, c_p, c_curr = c_curr, c_curr, channels
    cells, reduction_prev = [], False
    for i in range(layers):
      reduction = i in (layers // 3, 2 * layers // 3)
      if reduction:
        c_curr *= 2
      form = ops.choose_form(c_curr) if conv_form == 'auto' else conv_form
      cells.append(SearchCell(c_pp, c_p, c_curr, reduction, reduction_prev, self.primitives,
                              num_nodes, multiplier, {c_curr: form}, rngs, aux_skip, aux_rngs,
                              partial_channels))
      reduction_prev = reduction
      c_pp, c_p = c_p, multiplier * c_curr
    self.cells = nnx.List(cells)
    self.classifier = nnx.Linear(c_p, num_classes, kernel_init=ops.torch_uniform(c_p),
                                 bias_init=ops.torch_uniform(c_p), rngs=rngs)
    k = num_edges(num_nodes)
    self.alphas_normal = ArchParam(ops.normal(1e-3)(rngs.params(), (k, len(primitives))))
    self.alphas_reduce = ArchParam(ops.normal(1e-3)(rngs.params(), (k, len(primitives))))
    if edge_normalization:  # drawn last: the rest of the supernet initialises as without
      self.betas_normal = ArchParam(ops.normal(1e-3)(rngs.params(), (k,)))
      self.betas_reduce = ArchParam(ops.normal(1e-3)(rngs.params(), (k,)))
    else:
      self.betas_normal = self.betas_reduce = None

  def op_weights(self, key=None, step=None):
    """Relaxed op weights (normal, reduce), each (num_edges, num_ops); key=None: the
    relaxation's deterministic weights. Normal and reduce cells draw independent samples."""
    k1, k2 = jax.random.split(key) if key is not None else (None, None)
    return (self.relaxation.weights(self.alphas_normal[...], key=k1, step=step),
            self.relaxation.weights(self.alphas_reduce[...], key=k2, step=step))

  def edge_weights(self):
    """(normal, reduce) PC-DARTS edge weights, each (num_edges,): the per-node softmax of the
    betas; None without edge normalisation."""
    if self.betas_normal is None:
      return None
    return tuple(pcdarts.node_softmax(b[...], 2, self.num_nodes)
                 for b in (self.betas_normal, self.betas_reduce))

  def genotype_weights(self):
    """(normal, reduce) weights that the genotype is read off, as the relaxation defines;
    with edge normalisation each edge's row is scaled by its edge weight, so that the top-2
    edges per node are ranked by op weight x edge weight (PC-DARTS' `genotype`). The op chosen
    on an edge is unchanged by the (positive) scale."""
    weights = (self.relaxation.genotype_weights(self.alphas_normal[...]),
               self.relaxation.genotype_weights(self.alphas_reduce[...]))
    edges = self.edge_weights()
    if edges is None:
      return weights
    return tuple(w * e[:, None] for w, e in zip(weights, edges))

  def relaxation_loss(self):
    """The relaxation's term of the search loss (e.g. DrNAS's KL), summed over cell types."""
    return (self.relaxation.loss(self.alphas_normal[...]) +
            self.relaxation.loss(self.alphas_reduce[...]))

  def __call__(self, x, train: bool, key=None, step=None):
    edge_mods, drop_key = {}, None
    if self.edge_mods is not None and step is not None:
      edge_mods = self.edge_mods.edge_coefficients(step)
      if SKIP_DROPOUT in edge_mods and train and key is not None:
        key, drop_key = jax.random.split(key)
    w_normal, w_reduce = self.op_weights(key, step)
    e_normal, e_reduce = self.edge_weights() or (None, None)
    s = ops.conv(x, self.stem_w[...], 1, 1, 1)
    s0 = s1 = self.stem_bn(s, train)
    for i, cell in enumerate(self.cells):
      s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal, train, edge_mods,
                        None if drop_key is None else jax.random.fold_in(drop_key, i),
                        e_reduce if cell.reduction else e_normal)
    return self.classifier(jnp.mean(s1, axis=(1, 2)))
