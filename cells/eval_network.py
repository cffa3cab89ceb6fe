"""Stand-alone networks built from a genotype: the DARTS evaluation networks.

As quark0/darts `model.py` builds them (Liu et al., 2019, sec. 3.2-3.3): every cell applies
the genotype's 8 ops (2 per node), the ops' BNs are affine, the reduction cells sit at 1/3 and
2/3 depth and double the channels, an auxiliary head reads the cell at 2/3 depth (training
only; the reference adds 0.4 x its loss), and drop-path zeroes whole op outputs per example
(not on identity edges) with a probability that the trainer raises linearly over training.

  NetworkCIFAR     stem 3x3 conv (3C) + BN, `layers` cells, global pool, linear.
  NetworkImageNet  the mobile setting: two stride-2 stems to 28x28, 14 cells of C=48.

Ops are the single-edge versions of cells/ops.py's fan-out ops (E = 1), so the same
depthwise forms (`folded` on CPU, `grouped` on GPU) serve search and evaluation.
`analytic_flops` counts what a network computes, op by op, to cross-check XLA's count.
"""
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas.cells import darts, ops
from dnas.genotype import Genotype


def param(rngs: nnx.Rngs, shape: Sequence[int], fan_in: int) -> nnx.Param:
  return nnx.Param(ops.torch_uniform(fan_in)(rngs.params(), tuple(shape)))


def drop_path(x: jnp.ndarray, key: jax.Array, drop_prob) -> jnp.ndarray:
  """Zeroes each example's x with probability `drop_prob` and rescales the rest by
  1 / (1 - drop_prob), so the expectation is unchanged (the reference's utils.drop_path)."""
  keep = 1.0 - drop_prob
  mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


# ------------------------------------------------------------------------------- the ops


class SepConv(nnx.Module):
  """ReLU, dw k x k (stride), pw, BN, ReLU, dw k x k, pw, BN."""

  def __init__(self, c: int, k: int, stride: int, form: str, rngs: nnx.Rngs):
    self.k, self.stride, self.form = k, stride, form
    self.dw1 = param(rngs, (k, k, c), k * k)
    self.pw1 = param(rngs, (c, c), c)
    self.bn1 = ops.BatchNorm(c, affine=True)
    self.dw2 = param(rngs, (k, k, c), k * k)
    self.pw2 = param(rngs, (c, c), c)
    self.bn2 = ops.BatchNorm(c, affine=True)

  def __call__(self, x, train: bool):
    y = _dw_pw(jax.nn.relu(x), self.dw1[...], self.pw1[...], self.stride, 1, self.form)
    y = self.bn1(y, train)
    y = _dw_pw(jax.nn.relu(y), self.dw2[...], self.pw2[...], 1, 1, self.form)
    return self.bn2(y, train)


class DilConv(nnx.Module):
  """ReLU, dilated (2) dw k x k (stride), pw, BN."""

  def __init__(self, c: int, k: int, stride: int, form: str, rngs: nnx.Rngs):
    self.k, self.stride, self.form = k, stride, form
    self.dw = param(rngs, (k, k, c), k * k)
    self.pw = param(rngs, (c, c), c)
    self.bn = ops.BatchNorm(c, affine=True)

  def __call__(self, x, train: bool):
    y = _dw_pw(jax.nn.relu(x), self.dw[...], self.pw[...], self.stride, 2, self.form)
    return self.bn(y, train)


class Pool(nnx.Module):
  """3x3 max or average pool (count_include_pad=False), no BN (the eval net has none here)."""

  def __init__(self, kind: str, stride: int):
    self.kind, self.stride = kind, stride

  def __call__(self, x, train: bool):
    del train
    return (ops.max_pool_3x3 if self.kind == 'max' else ops.avg_pool_3x3)(x, self.stride)


class Identity(nnx.Module):

  def __call__(self, x, train: bool):
    del train
    return x


class Zero(nnx.Module):
  """`none`: zeros of the output shape (a hand-written genotype may name it)."""

  def __init__(self, stride: int):
    self.stride = stride

  def __call__(self, x, train: bool):
    del train
    return jnp.zeros_like(x[:, ::self.stride, ::self.stride])


class SkipReduce(nnx.Module):
  """skip_connect at stride 2, and the preprocessing after a reduction: the reference's
  FactorizedReduce. ReLU, two 1x1 stride-2 convs offset by one pixel, concatenated, BN."""

  def __init__(self, c_in: int, c_out: int, rngs: nnx.Rngs):
    if c_out % 2:
      raise ValueError(f'FactorizedReduce needs an even number of output channels, got {c_out}')
    self.w1 = param(rngs, (c_in, c_out // 2), c_in)
    self.w2 = param(rngs, (c_in, c_out // 2), c_in)
    self.bn = ops.BatchNorm(c_out, affine=True)

  def __call__(self, x, train: bool):
    if x.shape[1] % 2 or x.shape[2] % 2:
      raise ValueError(f'FactorizedReduce needs even height and width, got {x.shape[1:3]}: '
                       'use an input size that stays even until the second reduction')
    x = jax.nn.relu(x)
    a = jnp.einsum('bhwc,cd->bhwd', x[:, ::2, ::2], self.w1[...])
    b = jnp.einsum('bhwc,cd->bhwd', x[:, 1::2, 1::2], self.w2[...])
    return self.bn(jnp.concatenate([a, b], axis=-1), train)


class ReLUConvBN(nnx.Module):
  """ReLU, 1x1 conv, BN: the cell's preprocessing of its inputs."""

  def __init__(self, c_in: int, c_out: int, rngs: nnx.Rngs):
    self.w = param(rngs, (c_in, c_out), c_in)
    self.bn = ops.BatchNorm(c_out, affine=True)

  def __call__(self, x, train: bool):
    return self.bn(jnp.einsum('bhwc,cd->bhwd', jax.nn.relu(x), self.w[...]), train)


def _dw_pw(x, dw, pw, stride, dilation, form):
  return ops.fan_out_dw_pw(x, dw[None], pw[None], stride, dilation, form)[..., 0, :]


def make_op(name: str, c: int, stride: int, form: str, rngs: nnx.Rngs) -> nnx.Module:
  if name == 'none':
    return Zero(stride)
  if name in ('max_pool_3x3', 'avg_pool_3x3'):
    return Pool(name[:3], stride)
  if name == 'skip_connect':
    return Identity() if stride == 1 else SkipReduce(c, c, rngs)
  if name.startswith('sep_conv_'):
    return SepConv(c, int(name[-1]), stride, form, rngs)
  if name.startswith('dil_conv_'):
    return DilConv(c, int(name[-1]), stride, form, rngs)
  raise ValueError(f'unknown DARTS op {name!r}; valid ops: {", ".join(darts.PRIMITIVES)}')


# ------------------------------------------------------------------------------ the cell


class Cell(nnx.Module):
  """A discrete DARTS cell: node i sums ops 2i and 2i+1 of the genotype applied to the
  states they name; the output concatenates the `concat` states."""

  def __init__(self, genotype: Genotype, c_prev_prev: int, c_prev: int, c: int,
               reduction: bool, reduction_prev: bool, form: str, rngs: nnx.Rngs):
    self.reduction = reduction
    gene = genotype.reduce if reduction else genotype.normal
    self.concat = tuple(genotype.reduce_concat if reduction else genotype.normal_concat)
    self.indices = tuple(int(i) for _, i in gene)
    self.op_names = tuple(op for op, _ in gene)
    self.preprocess0 = (SkipReduce(c_prev_prev, c, rngs) if reduction_prev
                        else ReLUConvBN(c_prev_prev, c, rngs))
    self.preprocess1 = ReLUConvBN(c_prev, c, rngs)
    self.ops = nnx.List([make_op(name, c, 2 if reduction and i < 2 else 1, form, rngs)
                         for name, i in zip(self.op_names, self.indices)])

  @property
  def multiplier(self) -> int:
    return len(self.concat)

  def __call__(self, s0, s1, train: bool, key=None, drop_prob=0.0):
    states = [self.preprocess0(s0, train), self.preprocess1(s1, train)]
    for node in range(len(self.ops) // 2):
      total = 0.0
      for j in (2 * node, 2 * node + 1):
        h = self.ops[j](states[self.indices[j]], train)
        if train and key is not None and not isinstance(self.ops[j], Identity):
          h = drop_path(h, jax.random.fold_in(key, j), drop_prob)
        total = total + h
      states.append(total)
    return jnp.concatenate([states[i] for i in self.concat], axis=-1)


class AuxiliaryHead(nnx.Module):
  """ReLU, avg pool 5 (stride 3 CIFAR / 2 ImageNet), 1x1 conv 128, BN, ReLU, conv 768 over
  the whole pooled map, [BN,] ReLU, linear.

  The reference assumes an 8x8 input (CIFAR): pooled to 2x2, a 2x2 conv. For other sizes
  (mnist's 7x7) the pool window is capped by the map and the last conv covers the pooled map,
  which is the reference's head at 8x8. The ImageNet head has no BN after the 768 conv (as the
  reference, "for consistency with the experiments in the paper").
  """

  def __init__(self, c: int, spatial: int, num_classes: int, imagenet: bool, rngs: nnx.Rngs):
    self.window = min(5, spatial)
    self.stride = 2 if imagenet else 3
    self.pooled = (spatial - self.window) // self.stride + 1
    self.w1 = param(rngs, (1, 1, c, 128), c)
    self.bn1 = ops.BatchNorm(128, affine=True)
    self.w2 = param(rngs, (self.pooled, self.pooled, 128, 768), 128 * self.pooled ** 2)
    self.bn2 = None if imagenet else ops.BatchNorm(768, affine=True)
    self.classifier = nnx.Linear(768, num_classes, kernel_init=ops.torch_uniform(768),
                                 bias_init=ops.torch_uniform(768), rngs=rngs)

  def __call__(self, x, train: bool):
    w = self.window
    x = jax.lax.reduce_window(jax.nn.relu(x), 0.0, jax.lax.add, (1, w, w, 1),
                              (1, self.stride, self.stride, 1), 'VALID') / (w * w)
    x = jax.nn.relu(self.bn1(ops.conv(x, self.w1[...], 1, 1, 0), train))
    x = ops.conv(x, self.w2[...], 1, 1, 0)
    if self.bn2 is not None:
      x = self.bn2(x, train)
    return self.classifier(jax.nn.relu(x).reshape(x.shape[0], -1))


def _forms(conv_form: str):
  if conv_form != 'auto' and conv_form not in ops.FORMS:
    raise ValueError(f'unknown conv_form {conv_form!r}; valid: auto, {", ".join(ops.FORMS)}')
  return lambda c: ops.choose_form(c) if conv_form == 'auto' else conv_form


def _reductions(layers: int) -> tuple[int, int]:
  return layers // 3, 2 * layers // 3


class _Network(nnx.Module):
  """The cell stack, auxiliary head and classifier shared by both networks."""

  def _build_cells(self, genotype, c_pp, c_p, c, layers, reduction_prev, spatial, num_classes,
                   auxiliary, imagenet, conv_form, rngs):
    form = _forms(conv_form)
    cells = []
    self.aux_index = 2 * layers // 3
    aux_c = aux_spatial = None
    for i in range(layers):
      reduction = i in _reductions(layers)
      if reduction:
        c *= 2
        spatial = (spatial + 1) // 2
      cell = Cell(genotype, c_pp, c_p, c, reduction, reduction_prev, form(c), rngs)
      cells.append(cell)
      reduction_prev = reduction
      c_pp, c_p = c_p, cell.multiplier * c
      if i == self.aux_index:
        aux_c, aux_spatial = c_p, spatial
    self.cells = nnx.List(cells)
    self.auxiliary_head = (AuxiliaryHead(aux_c, aux_spatial, num_classes, imagenet, rngs)
                           if auxiliary else None)
    self.classifier = nnx.Linear(c_p, num_classes, kernel_init=ops.torch_uniform(c_p),
                                 bias_init=ops.torch_uniform(c_p), rngs=rngs)

  def _run_cells(self, s0, s1, train, key, drop_prob):
    logits_aux = None
    for i, cell in enumerate(self.cells):
      cell_key = jax.random.fold_in(key, i) if key is not None else None
      s0, s1 = s1, cell(s0, s1, train, cell_key, drop_prob)
      if i == self.aux_index and self.auxiliary_head is not None and train:
        logits_aux = self.auxiliary_head(s1, train)
    return self.classifier(jnp.mean(s1, axis=(1, 2))), logits_aux


class NetworkCIFAR(_Network):
  """The DARTS CIFAR evaluation network (paper: C=36, 20 cells, about 3.3 M parameters).

  `__call__(x, train, key=None, drop_prob=0.)` -> (logits, aux_logits); aux_logits is None
  unless training with an auxiliary head. Drop-path needs `train` and a `key`.
  """

  def __init__(self, genotype: Genotype, *, num_classes: int = 10, in_channels: int = 3,
               image_size: int = 32, channels: int = 36, layers: int = 20,
               auxiliary: bool = True, stem_multiplier: int = 3, conv_form: str = 'auto',
               rngs: nnx.Rngs):
    if layers < 3:
      raise ValueError(f'layers={layers}: the network needs at least 3 cells (normal, '
                       'reduction at 1/3, reduction at 2/3)')
    c_stem = stem_multiplier * channels
    self.stem_w = param(rngs, (3, 3, in_channels, c_stem), 9 * in_channels)
    self.stem_bn = ops.BatchNorm(c_stem, affine=True)
    self._build_cells(genotype, c_stem, c_stem, channels, layers, False, image_size,
                      num_classes, auxiliary, False, conv_form, rngs)

  def __call__(self, x, train: bool, key=None, drop_prob=0.0):
    s = self.stem_bn(ops.conv(x, self.stem_w[...], 1, 1, 1), train)
    return self._run_cells(s, s, train, key, drop_prob)


class NetworkImageNet(_Network):
  """The DARTS ImageNet network, mobile setting (paper: C=48, 14 cells, 224x224 input,
  4.7 M parameters, 574 M multiply-adds for DARTS_V2; `conv_macs(paper=True)` gives 529.9 M
  and 4.72 M: docs/design.md, "ImageNet multiply-adds"). Built and benchmarked here."""

  def __init__(self, genotype: Genotype, *, num_classes: int = 1000, in_channels: int = 3,
               image_size: int = 224, channels: int = 48, layers: int = 14,
               auxiliary: bool = False, conv_form: str = 'auto', rngs: nnx.Rngs):
    c = channels
    self.stem0_w1 = param(rngs, (3, 3, in_channels, c // 2), 9 * in_channels)
    self.stem0_bn1 = ops.BatchNorm(c // 2, affine=True)
    self.stem0_w2 = param(rngs, (3, 3, c // 2, c), 9 * (c // 2))
    self.stem0_bn2 = ops.BatchNorm(c, affine=True)
    self.stem1_w = param(rngs, (3, 3, c, c), 9 * c)
    self.stem1_bn = ops.BatchNorm(c, affine=True)
    spatial = image_size
    for _ in range(3):
      spatial = (spatial + 1) // 2
    self._build_cells(genotype, c, c, c, layers, True, spatial, num_classes, auxiliary, True,
                      conv_form, rngs)

  def __call__(self, x, train: bool, key=None, drop_prob=0.0):
    s0 = self.stem0_bn1(ops.conv(x, self.stem0_w1[...], 2, 1, 1), train)
    s0 = self.stem0_bn2(ops.conv(jax.nn.relu(s0), self.stem0_w2[...], 2, 1, 1), train)
    s1 = self.stem1_bn(ops.conv(jax.nn.relu(s0), self.stem1_w[...], 2, 1, 1), train)
    return self._run_cells(s0, s1, train, key, drop_prob)


def num_params(model: nnx.Module, auxiliary: bool = False) -> int:
  """Trainable parameters; without the auxiliary head by default, as the reference's
  utils.count_parameters_in_MB (the figure papers report)."""
  state = nnx.state(model, nnx.Param)
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
  head = getattr(model, 'auxiliary_head', None)
  if head is not None and not auxiliary:
    total -= sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(head, nnx.Param)))
  return total


# ------------------------------------------------------------------------- analytic FLOPs


def _conv_out(size: int, k: int, stride: int, dilation: int, pad: int) -> int:
  return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def _taps(size: int, k: int, stride: int, dilation: int, pad: int, paper: bool) -> int:
  """(output position, kernel tap) pairs along one axis. paper=True counts every pair; else
  only those that read inside the input, as XLA's cost analysis does (padding is free)."""
  out = _conv_out(size, k, stride, dilation, pad)
  if paper:
    return out * k
  return sum(0 <= o * stride - pad + t * dilation < size for o in range(out) for t in range(k))


def dense_conv_macs(h, w, k, stride, dilation, pad, c_in, c_out, paper):
  """(multiply-adds, output h, output w) of a dense k x k conv."""
  macs = (_taps(h, k, stride, dilation, pad, paper) * _taps(w, k, stride, dilation, pad, paper)
          * c_in * c_out)
  return macs, _conv_out(h, k, stride, dilation, pad), _conv_out(w, k, stride, dilation, pad)


def _dw_pw_macs(h, w, k, stride, dilation, c, form, paper):
  """A dw (k x k) + pw (C -> C) pair as `form` computes it: folded is one dense conv with
  the dw (x) pw kernel; the others a depthwise conv then a 1x1 conv."""
  pad = dilation * (k - 1) // 2
  if form == 'folded' and not paper:
    return dense_conv_macs(h, w, k, stride, dilation, pad, c, c, paper)
  # `shift` multiplies shifted slices of the zero-padded input: padding taps cost too.
  dw, ho, wo = dense_conv_macs(h, w, k, stride, dilation, pad, 1, c, paper or form == 'shift')
  return dw + ho * wo * c * c, ho, wo


def _op_macs(op, h: int, w: int, c: int, paper: bool) -> tuple[int, int, int]:
  """(multiply-adds, output h, output w) of one cell op on a (h, w, c) input."""
  if isinstance(op, SepConv):
    m1, ho, wo = _dw_pw_macs(h, w, op.k, op.stride, 1, c, op.form, paper)
    m2, _, _ = _dw_pw_macs(ho, wo, op.k, 1, 1, c, op.form, paper)
    return m1 + m2, ho, wo
  if isinstance(op, DilConv):
    return _dw_pw_macs(h, w, op.k, op.stride, 2, c, op.form, paper)
  if isinstance(op, SkipReduce):
    return (h // 2) * (w // 2) * c * c, h // 2, w // 2  # two 1x1 convs C -> C/2
  if isinstance(op, (Pool, Zero)):
    return 0, _conv_out(h, 3, op.stride, 1, 1), _conv_out(w, 3, op.stride, 1, 1)
  return 0, h, w


def conv_macs(model: _Network, batch: int, image_hw: tuple[int, int],
              paper: bool = False) -> int:
  """Multiply-adds of every conv and linear layer of one forward pass in eval mode
  (no auxiliary head), counted from the architecture alone.

  paper=False counts what the compiled network computes, as XLA's cost analysis does: the
  network's conv form (a folded dw (x) pw is one dense conv) and only the kernel taps that
  read inside the input. paper=True counts textbook depthwise-separable convs with every tap
  (k*k*C + C*C per pixel), the "multiply-adds" that papers report.
  """
  h, w = image_hw
  total = 0
  if isinstance(model, NetworkImageNet):
    c_in, c = model.stem0_w1.shape[2], model.stem0_w2.shape[3]
    m1, h1, w1 = dense_conv_macs(h, w, 3, 2, 1, 1, c_in, c // 2, paper)
    m2, h2, w2 = dense_conv_macs(h1, w1, 3, 2, 1, 1, c // 2, c, paper)
    m3, h3, w3 = dense_conv_macs(h2, w2, 3, 2, 1, 1, c, c, paper)
    total += m1 + m2 + m3
    shapes = [(h2, w2, c), (h3, w3, c)]
  else:
    c_in, c_stem = model.stem_w.shape[2], model.stem_w.shape[3]
    total += dense_conv_macs(h, w, 3, 1, 1, 1, c_in, c_stem, paper)[0]
    shapes = [(h, w, c_stem), (h, w, c_stem)]
  for cell in model.cells:
    (h0, w0, c0), (h1, w1, c1) = shapes
    c = cell.preprocess1.w.shape[1]
    if isinstance(cell.preprocess0, SkipReduce):
      total += (h0 // 2) * (w0 // 2) * c0 * c
      h0, w0 = h0 // 2, w0 // 2
    else:
      total += h0 * w0 * c0 * c
    total += h1 * w1 * c1 * c
    states = [(h0, w0), (h1, w1)]
    for node in range(len(cell.ops) // 2):
      for j in (2 * node, 2 * node + 1):
        macs, ho, wo = _op_macs(cell.ops[j], *states[cell.indices[j]], c, paper)
        total += macs
      states.append((ho, wo))
    ho, wo = states[cell.concat[0]]
    shapes = [shapes[1], (ho, wo, c * len(cell.concat))]
  total += model.classifier.in_features * model.classifier.out_features
  return batch * total


def analytic_flops(model: _Network, batch: int, image_hw: tuple[int, int]) -> int:
  """FLOPs of one eval-mode forward pass in XLA's convention: 2 per multiply-add of the convs
  and linear layers (what dominates), plus, for folded convs, the dw (x) pw kernel product
  (one multiply per kernel element, once per pass). Elementwise ops are not counted."""
  kernels = 0
  for cell in model.cells:
    c = cell.preprocess1.w.shape[1]
    for op in cell.ops:
      if isinstance(op, (SepConv, DilConv)) and op.form == 'folded':
        kernels += (2 if isinstance(op, SepConv) else 1) * op.k * op.k * c * c
  return 2 * conv_macs(model, batch, image_hw) + kernels
