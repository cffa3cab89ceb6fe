"""The NAS-Bench-201 search space (Dong & Yang, ICLR 2020), as D-X-Y/AutoDL-Projects builds it.

Cell: 4 nodes; node 0 is the cell input, node i = 1..3 sums one op on every earlier node, so
6 edges (numbered as `dnas.nb201_string.EDGES`: 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2); the
cell outputs node 3. Ops (`cell_operations.OPS`): `none` (zeros), `skip_connect` (identity),
`nor_conv_1x1` / `nor_conv_3x3` (ReLU -> conv, no bias -> BN), `avg_pool_3x3` (stride 1,
padding 1, count_include_pad=False, no BN). Inside a cell every edge keeps the channels and
the resolution.

Macro network (`TinyNetwork` / `TinyNetworkDarts`): stem 3x3 conv (no bias) + BN; three
stages of N cells at C, 2C, 4C channels, joined by residual reduction blocks
(`ResNetBasicblock(C_in, C_out, stride 2)`: ReLU-conv3x3/2-BN, ReLU-conv3x3-BN, plus a
residual 2x2 average pool (stride 2) and 1x1 conv); then BN, ReLU, global average pool and a
linear classifier. The stem, reduction-block and final BNs are affine and keep running
statistics in both networks.

`SearchNetwork` is the supernet (`TinyNetworkDarts` with `NAS201SearchCell`): every edge is
a mixed op over all candidate ops, weighted by the relaxed alphas; one alpha array (6, ops),
shared by every cell, is an `ArchParam`. Cell BNs are non-affine (`affine=False`, as every
NB201 search script passes). Running statistics of the cell BNs follow
`track_running_stats` (the reference scripts' `--track_running_stats` / "BN" argument):
False (the default here) normalises with the current batch's statistics in training *and*
evaluation and stores none, as the NAS-Bench-201 example command (`DARTS-V1.sh cifar10 0 -1`)
and NATS-Bench search do (NB201's Table 5: BN=0 searches much better); True keeps PyTorch
running averages (momentum 0.1) used in evaluation mode. In evaluation the last, padded
batch of `trainers.data.evaluate` then takes part in its own statistics (the padding repeats
its first example).

`Network` is the stand-alone network of one architecture (`InferCell`): only the chosen op on
each edge, every BN affine with running statistics; a node whose inputs are all `none` is zero.

Efficiency, as in cells/darts.py: edges are grouped by source node. Per source, the ReLU is
computed once, the average pool once (shared by all outgoing edges: same input, no weights),
and each conv op of all E outgoing edges is one fan-out conv C -> E*C (weights stored per
edge, (E,k,k,C,C), so the parameter count is the reference's); BNs are the own
`ops.BatchNorm` (nnx.BatchNorm slows tracing ~10x).

PC-DARTS (cells/pcdarts.py) switches on as in cells/darts.py: `partial_channels=K` (C/K
channels through the ops, the rest bypass, channel shuffle) and `edge_normalization` (an
ArchParam `betas` (6,), softmax over each node's incoming edges, scaling the edge outputs).
The read-off (argmax per edge) is unchanged by edge weights, so they do not enter it.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas import nb201_string, relaxations
from dnas.arch import ArchParam
from dnas.mixed_op import weighted_sum
from dnas.cells import ops, pcdarts

SPACE = nb201_string.SPACE
PRIMITIVES = nb201_string.OPS
EDGES = nb201_string.EDGES
NUM_EDGES = nb201_string.NUM_EDGES
NUM_NODES = nb201_string.NUM_NODES
CONV_KERNEL = {'nor_conv_1x1': 1, 'nor_conv_3x3': 3}
EPS = 1e-5


def check_primitives(primitives: Sequence[str]) -> tuple[str, ...]:
  """A candidate op list for the NB201 supernet: NB201 ops, no repeats, not only `none`."""
  primitives = tuple(primitives)
  unknown = [p for p in primitives if p not in PRIMITIVES]
  if unknown or not primitives:
    raise ValueError(f'unknown NAS-Bench-201 op(s) {unknown}; valid ops: {", ".join(PRIMITIVES)}')
  if len(set(primitives)) != len(primitives):
    raise ValueError(f'NAS-Bench-201 op list {list(primitives)} repeats an op; list each once')
  if set(primitives) == {'none'}:
    raise ValueError("NAS-Bench-201 op list has only 'none'; add at least one other op")
  return primitives


def edges_from(source: int) -> list[tuple[int, int]]:
  """(edge index, target node) of every edge leaving node `source`, by target node."""
  return [(e, target) for e, (target, j) in enumerate(EDGES) if j == source]


def _conv_param(rngs: nnx.Rngs, shape: Sequence[int], fan_in: int) -> nnx.Param:
  return nnx.Param(ops.torch_uniform(fan_in)(rngs.params(), tuple(shape)))


class BatchStatsNorm(nnx.Module):
  """BN with `track_running_stats=False`: always the current batch's statistics (biased
  variance, eps 1e-5), in training and evaluation alike; stores no statistics."""

  def __init__(self, num_features: int, affine: bool = False):
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32)) if affine else None
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32)) if affine else None

  def __call__(self, x, train: bool):
    del train
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    var = jnp.maximum(jnp.mean(jnp.square(x), axes) - jnp.square(mean), 0.0)
    y = (x - mean) * jax.lax.rsqrt(var + EPS)
    if self.scale is not None:
      y = y * self.scale.get_value() + self.bias.get_value()
    return y


def batch_norm(num_features: int, affine: bool, track_running_stats: bool):
  if track_running_stats:
    return ops.BatchNorm(num_features, affine)
  return BatchStatsNorm(num_features, affine)


def _apply_bn(bn, x, train: bool):
  """BN over all trailing feature axes of x (B,H,W,...), e.g. (E, C) of a fan-out output."""
  lead = x.shape[:3]
  return bn(x.reshape(lead + (-1,)), train).reshape(x.shape)


# ------------------------------------------------------------------------------- search


class FanOutMixedOp(nnx.Module):
  """The mixed ops of the E edges that leave one node, computed together.

  Returns (B,H,W,E,C): edge e's weighted sum of every candidate op.
  """

  def __init__(self, c: int, edges: int, primitives: Sequence[str], track_running_stats: bool,
               rngs: nnx.Rngs):
    self.primitives = tuple(primitives)
    self.convs = nnx.Dict()
    self.bns = nnx.Dict()
    for name, k in CONV_KERNEL.items():
      if name in self.primitives:
        self.convs[name] = _conv_param(rngs, (edges, k, k, c, c), k * k * c)
        self.bns[name] = batch_norm(edges * c, False, track_running_stats)

  def _conv(self, name: str, relu_h, train: bool):
    w = self.convs[name][...]
    e, k, _, c, d = w.shape
    if k == 1:
      y = jnp.einsum('bhwc,ecd->bhwed', relu_h, w[:, 0, 0])
    else:
      kernel = jnp.transpose(w, (1, 2, 3, 0, 4)).reshape(k, k, c, e * d)
      y = ops.conv(relu_h, kernel, 1, 1, k // 2)
      y = y.reshape(y.shape[:3] + (e, d))
    return _apply_bn(self.bns[name], y, train)

  def __call__(self, h, weights, train: bool):
    """h (B,H,W,C) the source node; weights (E, len(primitives)) relaxed op weights."""
    relu_h = jax.nn.relu(h) if any(p in CONV_KERNEL for p in self.primitives) else None
    outputs = {}
    for k, name in enumerate(self.primitives):
      if name == 'none':
        continue  # zero output: its weight only takes part in the relaxation
      if name == 'skip_connect':
        outputs[k] = h[..., None, :]
      elif name == 'avg_pool_3x3':
        outputs[k] = ops.avg_pool_3x3(h, 1)[..., None, :]
      else:
        outputs[k] = self._conv(name, relu_h, train)
    return weighted_sum(outputs, weights, edge_axis=-2)


class SearchCell(nnx.Module):
  """NB201 search cell (`NAS201SearchCell`) at c channels, stride 1."""

  def __init__(self, c: int, primitives: Sequence[str], track_running_stats: bool,
               rngs: nnx.Rngs, partial_channels: int = 1):
    k = partial_channels

    def mixed_op(source):
      op = FanOutMixedOp(c // k, len(edges_from(source)), primitives, track_running_stats, rngs)
      return op if k == 1 else pcdarts.PartialChannels(op, k, 1)
    self.fan_out = nnx.List([mixed_op(s) for s in range(NUM_NODES - 1)])

  def __call__(self, x, weights, train: bool, edge_weights=None):
    """weights: (6, num_ops) in the reference edge order; edge_weights (6,) scale each
    edge's output (PC-DARTS)."""
    nodes = [ops.materialize(x)]
    node_inputs = [[] for _ in range(NUM_NODES)]
    for source in range(NUM_NODES - 1):
      if source >= 1:  # every edge into this node has been computed
        nodes.append(ops.materialize(sum(node_inputs[source])))
      edges = edges_from(source)
      index = np.array([e for e, _ in edges])
      out = self.fan_out[source](nodes[source], weights[index], train)
      if edge_weights is not None:
        out = out * edge_weights[index][:, None]
      for i, (_, target) in enumerate(edges):
        node_inputs[target].append(out[..., i, :])
    return sum(node_inputs[-1])


# ----------------------------------------------------------------------- shared modules


class ReLUConvBN(nnx.Module):
  """ReLU -> k x k conv (no bias, padding k // 2) -> BN, as `cell_operations.ReLUConvBN`."""

  def __init__(self, c_in: int, c_out: int, k: int, stride: int, rngs: nnx.Rngs,
               affine: bool = True, track_running_stats: bool = True):
    self.stride = stride
    self.w = _conv_param(rngs, (k, k, c_in, c_out), k * k * c_in)
    self.bn = batch_norm(c_out, affine, track_running_stats)

  def __call__(self, x, train: bool):
    w = self.w[...]
    y = ops.conv(jax.nn.relu(x), w, self.stride, 1, w.shape[0] // 2)
    return self.bn(y, train)


class ResidualReduction(nnx.Module):
  """`ResNetBasicblock(c_in, c_out, stride=2)`: ReLUConvBN 3x3/2 -> ReLUConvBN 3x3, plus
  the residual avg-pool 2x2/2 -> 1x1 conv (no BN). Affine BNs with running statistics."""

  def __init__(self, c_in: int, c_out: int, rngs: nnx.Rngs):
    self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, rngs)
    self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, rngs)
    self.down = _conv_param(rngs, (c_in, c_out), c_in)

  def __call__(self, x, train: bool):
    b, h, w, c = x.shape
    if h % 2 or w % 2:
      raise ValueError(f'an NB201 reduction block needs an even feature map, got {h}x{w}: use '
                       f'images whose side is divisible by 4 (e.g. 28 or 32)')
    pooled = x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    residual = jnp.einsum('bhwc,cd->bhwd', pooled, self.down[...])
    return residual + self.conv_b(self.conv_a(x, train), train)


class _Macro(nnx.Module):
  """Stem, 3 stages of `cells_per_stage` cells joined by reduction blocks, BN-ReLU, pool,
  classifier. `make_cell(c)` builds one cell at c channels."""

  def _build(self, make_cell, *, num_classes: int, in_channels: int, channels: int,
             cells_per_stage: int, rngs: nnx.Rngs):
    if channels <= 0 or cells_per_stage <= 0:
      raise ValueError(f'NB201 network needs channels > 0 and cells_per_stage > 0, got '
                       f'{channels} and {cells_per_stage}')
    self.stem_w = _conv_param(rngs, (3, 3, in_channels, channels), 9 * in_channels)
    self.stem_bn = ops.BatchNorm(channels, affine=True)
    cells, c_prev = [], channels
    for stage in range(3):
      c = channels * 2 ** stage
      if stage:
        cells.append(ResidualReduction(c_prev, c, rngs))
      cells.extend(make_cell(c) for _ in range(cells_per_stage))
      c_prev = c
    self.cells = nnx.List(cells)
    self.last_bn = ops.BatchNorm(c_prev, affine=True)
    self.classifier = nnx.Linear(c_prev, num_classes, kernel_init=ops.torch_uniform(c_prev),
                                 bias_init=ops.torch_uniform(c_prev), rngs=rngs)

  def _run(self, x, train: bool, run_cell):
    s = self.stem_bn(ops.conv(x, self.stem_w[...], 1, 1, 1), train)
    for cell in self.cells:
      s = cell(s, train) if isinstance(cell, ResidualReduction) else run_cell(cell, s)
    s = jax.nn.relu(self.last_bn(s, train))
    return self.classifier(jnp.mean(s, axis=(1, 2)))


class SearchNetwork(_Macro):
  """The NB201 supernet (`TinyNetworkDarts`). `alphas` (6, num_ops) is an `ArchParam`,
  shared by all cells, initialised to 1e-3 * N(0, 1) as the reference; op weights come from
  the relaxation (`dnas.relaxations`). Same interface as cells/darts.py `SearchNetwork`:
  `__call__(x, train, key, step)`, `op_weights`, `genotype_weights`, `relaxation_loss`; NB201
  has one cell type, so the weight methods return one (6, num_ops) array. PC-DARTS:
  `partial_channels` K, `edge_normalization` (module docstring)."""

  def __init__(self, *, num_classes: int, in_channels: int = 3, channels: int = 16,
               cells_per_stage: int = 5, primitives: Sequence[str] = PRIMITIVES,
               relaxation: str | relaxations.Relaxation = 'softmax',
               track_running_stats: bool = False, partial_channels: int = 1,
               edge_normalization: bool = False, rngs: nnx.Rngs):
    self.primitives = check_primitives(primitives)
    self.relaxation = (relaxations.make(relaxation) if isinstance(relaxation, str)
                       else relaxation)
    pcdarts.check_partial_channels(partial_channels, [channels], 'the NB201 supernet (C)')
    if not isinstance(edge_normalization, bool):
      raise ValueError(f'edge_normalization must be True or False, got {edge_normalization!r}')
    self._build(lambda c: SearchCell(c, self.primitives, track_running_stats, rngs,
                                     partial_channels),
                num_classes=num_classes, in_channels=in_channels, channels=channels,
                cells_per_stage=cells_per_stage, rngs=rngs)
    self.alphas = ArchParam(1e-3 * jax.random.normal(rngs.params(),
                                                     (NUM_EDGES, len(self.primitives))))
    # Drawn last: the rest of the supernet initialises as without edge normalisation.
    self.betas = (ArchParam(ops.normal(1e-3)(rngs.params(), (NUM_EDGES,)))
                  if edge_normalization else None)

  def op_weights(self, key=None, step=None):
    """Relaxed op weights (6, num_ops); key=None: the relaxation's deterministic weights."""
    return self.relaxation.weights(self.alphas[...], key=key, step=step)

  def edge_weights(self):
    """PC-DARTS edge weights (6,): softmax of the betas per node; None without edge
    normalisation."""
    if self.betas is None:
      return None
    return pcdarts.node_softmax(self.betas[...], 1, NUM_NODES - 1)

  def genotype_weights(self):
    """The weights the architecture is read off (argmax per edge, see nb201_string.derive;
    an edge weight would scale a whole row, so it is left out)."""
    return self.relaxation.genotype_weights(self.alphas[...])

  def relaxation_loss(self):
    return self.relaxation.loss(self.alphas[...])

  def derive_arch(self) -> str:
    """The derived arch string (argmax over all ops per edge, `none` included)."""
    return nb201_string.derive(jax.device_get(self.genotype_weights()), self.primitives)

  def __call__(self, x, train: bool, key=None, step=None):
    weights, edge_weights = self.op_weights(key, step), self.edge_weights()
    return self._run(x, train, lambda cell, s: cell(s, weights, train, edge_weights))


# --------------------------------------------------------------------------- stand-alone


class InferCell(nnx.Module):
  """The NB201 cell of one architecture (`InferCell`, stride 1): the chosen op per edge."""

  def __init__(self, arch_ops: Sequence[str], c: int, rngs: nnx.Rngs):
    self.arch_ops = nb201_string.check_ops(arch_ops)
    self.convs = nnx.Dict()
    for e, op in enumerate(self.arch_ops):
      if op in CONV_KERNEL:
        self.convs[f'edge{e}'] = ReLUConvBN(c, c, CONV_KERNEL[op], 1, rngs)

  def __call__(self, x, train: bool):
    nodes = [x]
    for i in range(1, NUM_NODES):
      terms = []
      for e, (target, j) in enumerate(EDGES):
        op = self.arch_ops[e]
        if target != i or op == 'none':
          continue
        if op == 'skip_connect':
          terms.append(nodes[j])
        elif op == 'avg_pool_3x3':
          terms.append(ops.avg_pool_3x3(nodes[j], 1))
        else:
          terms.append(self.convs[f'edge{e}'](nodes[j], train))
      nodes.append(sum(terms) if terms else jnp.zeros_like(x))
    return nodes[-1]


class Network(_Macro):
  """The stand-alone NB201 network (`TinyNetwork`) of one architecture, given as an arch
  string or its 6 op names; NAS-Bench-201 trains it with C=16, N=5."""

  def __init__(self, arch: str | Sequence[str], *, num_classes: int = 10, in_channels: int = 3,
               channels: int = 16, cells_per_stage: int = 5, rngs: nnx.Rngs):
    arch_ops = nb201_string.parse(arch) if isinstance(arch, str) else nb201_string.check_ops(arch)
    self.arch = nb201_string.format(arch_ops)
    self._build(lambda c: InferCell(arch_ops, c, rngs), num_classes=num_classes,
                in_channels=in_channels, channels=channels, cells_per_stage=cells_per_stage,
                rngs=rngs)

  def __call__(self, x, train: bool):
    return self._run(x, train, lambda cell, s: cell(s, train))


def num_params(model: nnx.Module) -> int:
  """Trainable weights (nnx.Param), architecture parameters (ArchParam) not counted."""
  state = nnx.state(model, nnx.Param)
  arch = nnx.state(model, ArchParam)
  count = lambda st: sum(int(x.size) for x in jax.tree.leaves(st))
  return count(state) - count(arch)
