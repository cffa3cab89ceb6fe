"""DARTS candidate operations, computed for all edges that leave one node at once.

Layout is NHWC. Every op of the DARTS space starts from the same input `h` of a source node,
so the work that does not depend on the edge is done once per source (ReLU, pooling and the
weight-free BN after it) and the per-edge convolutions of all E outgoing edges are batched:

  * stage 1 of a separable / dilated conv (depthwise k x k then pointwise, per edge) is one
    "fan-out" convolution C -> E*C;
  * stage 2 of a separable conv works on the (E, C) stage-1 output with per-edge weights.

Weights are stored unfolded (depthwise `dw` (E,k,k,C), pointwise `pw` (E,C,C)) so the
parameter count is exactly the reference's. How a depthwise+pointwise pair is computed is a
*form*, picked per shape and backend (`choose_form`), because XLA's cost model differs wildly:

  folded   one dense conv whose kernel is dw (x) pw. k*k*C/(k*k+C) times the FLOPs, but XLA
           CPU's dense convs are ~10x faster than its grouped ones: the CPU choice.
  shift    depthwise as a sum of k*k shifted slices (one fused loop), pointwise as a matmul.
           Faster per op at C>=32 in isolation, slower in the whole network (see choose_form).
  grouped  `feature_group_count` depthwise + matmul: the native form for GPU (cuDNN).
"""
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas import kernel_grads

FORMS = ('folded', 'shift', 'grouped')


def choose_form(channels: int, backend: str | None = None) -> str:
  """The fastest depthwise form measured for this channel count and backend.

  CPU (XLA CPU, jax 0.10-0.11, 2 threads, whole search network fwd+bwd): folded wins at
  every DARTS shape, C=8..64. The shifted-slice form, though cheaper per op in isolation,
  made the network slower and bigger once the node states were materialised: small config
  steady 3.5 s vs 1.9 s, paper config 38 s / 20 GB vs 19 s / 10 GB, and twice the HLO ops.
  """
  del channels
  backend = backend or jax.default_backend()
  if backend == 'cpu':
    return 'folded'
  if backend == 'tpu':
    return 'folded'
  return 'grouped'


def host_rng(key: jax.Array) -> np.random.Generator:
  """A numpy generator seeded by a JAX key: init stays a pure function of the seed.

  Eager jax.random compiles one XLA sampler per distinct shape (threefry is large): building
  the small search net that way took 40 s of CPU, longer than compiling its forward pass.
  Under nnx.eval_shape or jit (a traced key) callers fall back to jax.random."""
  return np.random.default_rng(np.asarray(jax.random.key_data(key)).astype(np.uint32))


def torch_uniform(fan_in: int):
  """PyTorch's default conv/linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn on the host
  (see `host_rng`)."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    if isinstance(key, jax.core.Tracer):
      return jax.random.uniform(key, tuple(shape), dtype, -bound, bound)
    return jnp.asarray(host_rng(key).uniform(-bound, bound, tuple(shape)), dtype)
  return init


def normal(stddev: float):
  """N(0, stddev^2) drawn on the host (see `host_rng`); DARTS' alpha init is normal(1e-3)."""
  def init(key, shape, dtype=jnp.float32):
    if isinstance(key, jax.core.Tracer):
      return stddev * jax.random.normal(key, tuple(shape), dtype)
    return jnp.asarray(stddev * host_rng(key).standard_normal(tuple(shape)), dtype)
  return init


def param(rngs: nnx.Rngs, shape: Sequence[int], fan_in: int) -> nnx.Param:
  return nnx.Param(torch_uniform(fan_in)(rngs.params(), tuple(shape)))


class BatchNorm(nnx.Module):
  """PyTorch-semantics batch norm over the last axis (momentum 0.1, eps 1e-5, unbiased
  running variance). Search BNs have no affine parameters; the stem's has.

  Own module rather than nnx.BatchNorm: flax's in-place `var[...] = new` update path queries
  `.sharding` on tracers, which costs ~30 ms of trace time per BN in a supernet-sized graph
  (the search net has hundreds of BNs); `set_value` does not.
  """

  def __init__(self, num_features: int, affine: bool = False, momentum: float = 0.1,
               eps: float = 1e-5):
    self.momentum, self.eps = momentum, eps
    # numpy constants, not jnp.zeros: eager jnp compiles one broadcast per shape.
    zeros, ones = np.zeros(num_features, np.float32), np.ones(num_features, np.float32)
    self.mean = nnx.BatchStat(jnp.asarray(zeros))
    self.var = nnx.BatchStat(jnp.asarray(ones))
    self.scale = nnx.Param(jnp.asarray(ones)) if affine else None
    self.bias = nnx.Param(jnp.asarray(zeros)) if affine else None

  def __call__(self, x, train: bool):
    if train:
      # Inside a shared gradient pass the memory-saving VJP, inside its forward-over-reverse
      # pass the JVP with the same property; affine BNs (y is not x-hat) and everything
      # outside the shared passes differentiate by plain autodiff.
      if self.scale is not None:
        normalize = _normalize_with_batch_stats
      elif kernel_grads.in_forward_mode():
        normalize = _normalize_tangent_from_output
      else:
        normalize = (_normalize_with_batch_stats if kernel_grads.flag() is None
                     else _normalize_saving_only_output)
      y, mean, var = normalize(x, self.eps)
      n = x.size // x.shape[-1]
      new_mean, new_var = _running_averages(self.mean.get_value(), self.var.get_value(), mean,
                                            var, self.momentum, n / max(n - 1, 1))
      self.mean.set_value(new_mean)
      self.var.set_value(new_var)
    else:
      y = _normalize(x, self.mean.get_value(), self.var.get_value(), self.eps)
    if self.scale is not None:
      y = _affine(y, self.scale.get_value(), self.bias.get_value())
    return y


# BN's arithmetic as jitted functions: JAX caches a jitted function's trace, its JVP and its
# transpose per input shape, and a supernet's BNs come in a few dozen shapes (the six conv BNs
# of a source share one), so tracing pays once per shape instead of once per BN, and the
# lowered module calls one function per shape. XLA inlines the calls: the compiled step is the
# same (same kernels, same losses to the bit). Small search config, with `weighted_sum` and
# `materialize` jitted likewise: lowering 7.4 -> 5.2 s, compile ~4 s shorter (the lowered
# module shrank from 54k to 33k lines). Ops that hold convs gained nothing from the same
# treatment: their shapes rarely repeat.
@functools.partial(jax.jit, static_argnums=3)
def _normalize(x, mean, var, eps: float):
  return (x - mean) * jax.lax.rsqrt(var + eps)


@functools.partial(jax.jit, static_argnums=1)
def _normalize_with_batch_stats(x, eps: float):
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  var = jnp.maximum(jnp.mean(jnp.square(x), axes) - jnp.square(mean), 0.0)
  return _normalize(x, mean, var, eps), mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _normalize_saving_only_output(x, eps: float):
  """`_normalize_with_batch_stats` whose backward pass keeps only its output y and 1/std.

  With plain autodiff the backward pass kept the input x (a conv output), x - mean and y:
  up to three copies of every BN-sized tensor of the supernet. Without affine parameters y
  is x-hat itself, and BN's gradient needs only x-hat and 1/std; y is kept anyway, for the
  alpha gradient of the weighted sum that reads it. Small search config: XLA's temp buffers
  1.055 -> 0.602 GiB, peak RSS 2.01 -> 1.67 GB; paper config 8.03 -> 5.31 GB; step time
  unchanged. Reverse mode only (custom_vjp has no JVP): used inside the shared gradient
  passes (dnas/kernel_grads.py), as `canonical_conv` is; their forward-over-reverse pass
  (the exact HVP) takes `_normalize_tangent_from_output`."""
  return _normalize_with_batch_stats(x, eps)


@functools.partial(jax.jit, static_argnums=1)
def _normalize_saving_only_output_fwd(x, eps: float):
  y, mean, var = _normalize_with_batch_stats(x, eps)
  # Materialised, or XLA fuses the normalisation into y's readers on both sides of the
  # forward/backward boundary and keeps x alive for them as well as y.
  y = materialize(y)
  return (y, mean, var), (y, jax.lax.rsqrt(var + eps))


@functools.partial(jax.jit, static_argnums=0)
def _normalize_saving_only_output_bwd(eps: float, residuals, cotangents):
  del eps
  y, rstd = residuals
  g, g_mean, g_var = cotangents
  axes = tuple(range(y.ndim - 1))
  n = y.size // y.shape[-1]
  dx = rstd * (g - jnp.mean(g, axes) - y * jnp.mean(g * y, axes))
  # The batch mean and variance are outputs too (the running averages read them, under
  # stop_gradient): d mean / dx = 1/n, d var / dx = 2 (x - mean) / n = 2 y / (n rstd).
  return (dx + g_mean / n + g_var * (2.0 / n) * y / rstd,)


_normalize_saving_only_output.defvjp(_normalize_saving_only_output_fwd,
                                     _normalize_saving_only_output_bwd)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _normalize_tangent_from_output(x, eps: float):
  """`_normalize_saving_only_output` for forward over reverse (the exact HVP's pass).

  The JVP is written in terms of y (x-hat) and 1/std, so reverse mode, which transposes it,
  keeps only those (and the outer forward mode their tangents), not x, x - mean and y."""
  return _normalize_with_batch_stats(x, eps)


@_normalize_tangent_from_output.defjvp
def _normalize_tangent_from_output_jvp(eps: float, primals, tangents):
  (x,), (dx,) = primals, tangents
  y, mean, var = _normalize_with_batch_stats(x, eps)
  y = materialize(y)  # as in `_normalize_saving_only_output_fwd`
  rstd = jax.lax.rsqrt(var + eps)
  axes = tuple(range(x.ndim - 1))
  d_mean, dx_y = jnp.mean(dx, axes), jnp.mean(dx * y, axes)
  # d var = 2 mean((x - mean) dx) = 2 mean(y dx) / rstd; dy = rstd (dx - d mean - y mean(y dx)).
  return (y, mean, var), (rstd * (dx - d_mean - y * dx_y), d_mean, 2.0 * dx_y / rstd)


@functools.partial(jax.jit, static_argnums=(4, 5))
def _running_averages(running_mean, running_var, mean, var, momentum: float, unbias: float):
  """PyTorch's update: the running variance takes the unbiased batch variance."""
  mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
  m = momentum
  return (1 - m) * running_mean + m * mean, (1 - m) * running_var + m * (var * unbias)


@jax.jit
def _affine(y, scale, bias):
  return y * scale + bias


def batch_norm(num_features: int, rngs: nnx.Rngs | None = None, affine: bool = False) -> BatchNorm:
  del rngs  # deterministic init
  return BatchNorm(num_features, affine)


def apply_bn(bn: BatchNorm, x: jnp.ndarray, train: bool) -> jnp.ndarray:
  """BN over all trailing feature axes of x (e.g. (E, C) of a fan-out output)."""
  lead = x.shape[:3]
  return bn(x.reshape(lead + (-1,)), train).reshape(x.shape)


@jax.jit  # traced once per shape, as BN above
def materialize(state):
  """Make XLA compute a value once, into its own buffer: an identity matmul (exact).

  A node is a sum of weighted op outputs over its edges: a few hundred elementwise ops.
  XLA fuses such a cheap expression into every consumer (the ReLU and pools of the next
  source, the cell's output concat, ...) and recomputes it in each: on the small search
  config a single concat fusion took 45 ms. `jax.lax.optimization_barrier` does not prevent
  that on XLA CPU (jax 0.10.2 strips barriers before fusion). A library call (dot, conv)
  always reads and writes whole buffers, so `state @ I` is computed once and its consumers
  read the result. It is exact (x * 1 and sums of zeros; an inf spreads NaN across the
  channels of its block, which the search's NaN check reports). The identity is applied to
  blocks of 8 channels, so it costs 16 flops per element whatever the width (a full C x C
  identity cost 2 C: 512 at the paper config's widest BN outputs, as much as a 3x3 conv).
  Small search config, 2 cores: step 2.77 -> 2.37 s, compile 42.6 -> 34.6 s. (A division by
  a run-time 1.0, which XLA will not duplicate either, was as fast but only while
  loop-invariant code motion hid the divisor's broadcast: XLA otherwise turns it into a
  cheap multiply.)"""
  if jax.default_backend() != 'cpu':  # GPU/TPU fusion differs; not measured there: a barrier
    return jax.lax.optimization_barrier(state)
  c = state.shape[-1]
  block = next((b for b in (8, 4, 2) if c % b == 0), c)
  blocks = state.reshape(state.shape[:-1] + (c // block, block))
  eye = jnp.eye(block, dtype=state.dtype)
  out = jnp.einsum('...c,cd->...d', blocks, eye, precision=jax.lax.Precision.HIGHEST)
  return out.reshape(state.shape)


# ---------------------------------------------------------------------------- spatial taps


def _out_size(size: int, k: int, stride: int, dilation: int, pad: int) -> int:
  return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def taps(x: jnp.ndarray, k: int, stride: int = 1, dilation: int = 1, pad: int = 0,
         pad_value: float = 0.0):
  """The k*k shifted, strided views of x (B,H,W,...) that a k x k window sees."""
  b, h, w = x.shape[:3]
  ho, wo = _out_size(h, k, stride, dilation, pad), _out_size(w, k, stride, dilation, pad)
  widths = [(0, 0), (pad, pad), (pad, pad)] + [(0, 0)] * (x.ndim - 3)
  xp = jnp.pad(x, widths, constant_values=pad_value) if pad else x
  for dy in range(k):
    for dx in range(k):
      y0, x0 = dy * dilation, dx * dilation
      start = (0, y0, x0) + (0,) * (x.ndim - 3)
      limit = (b, y0 + (ho - 1) * stride + 1, x0 + (wo - 1) * stride + 1) + x.shape[3:]
      strides = (1, stride, stride) + (1,) * (x.ndim - 3)
      yield dy, dx, jax.lax.slice(xp, start, limit, strides)


def _pool_window(stride: int):
  return (1, 3, 3, 1), (1, stride, stride, 1), [(0, 0), (1, 1), (1, 1), (0, 0)]


def max_pool_3x3(x: jnp.ndarray, stride: int) -> jnp.ndarray:
  """nn.MaxPool2d(3, stride, padding=1).

  One `reduce_window` rather than a max over 9 shifted views: XLA CPU fused the producer of
  `x` (a node's weighted sum) into each of the 9 views and their padded gradients.
  """
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, *_pool_window(stride))


def avg_pool_3x3(x: jnp.ndarray, stride: int) -> jnp.ndarray:
  """nn.AvgPool2d(3, stride, padding=1, count_include_pad=False)."""
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, *_pool_window(stride))
  ones = np.ones((1,) + x.shape[1:3] + (1,), np.float32)
  count = sum(np.asarray(v) for _, _, v in _np_taps(ones, 3, stride, 1, 1))
  return total / jnp.asarray(count, x.dtype)


def _np_taps(x: np.ndarray, k, stride, dilation, pad):
  xp = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
  ho = _out_size(x.shape[1], k, stride, dilation, pad)
  wo = _out_size(x.shape[2], k, stride, dilation, pad)
  for dy in range(k):
    for dx in range(k):
      y0, x0 = dy * dilation, dx * dilation
      yield dy, dx, xp[:, y0:y0 + (ho - 1) * stride + 1:stride, x0:x0 + (wo - 1) * stride + 1:stride]


# ------------------------------------------------------------------------ depthwise + pointwise


_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _conv(x, kernel, stride, dilation, pad, groups=1, lhs_dilation=1):
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), pad if isinstance(pad, list) else [(pad, pad), (pad, pad)],
      lhs_dilation=(lhs_dilation, lhs_dilation), rhs_dilation=(dilation, dilation),
      dimension_numbers=_NHWC, feature_group_count=groups)


def conv(x, kernel, stride, dilation, pad, groups=1):
  """Square conv, NHWC x HWIO, symmetric padding. Inside a shared gradient pass
  (dnas/kernel_grads.py `only_if`) dense convs differentiate through `canonical_conv`, inside
  its forward-over-reverse pass (`forward_mode`) through `canonical_jvp_conv`; elsewhere, and
  for grouped convs, through JAX's own rules."""
  flag = kernel_grads.flag()
  if groups == 1 and kernel_grads.in_forward_mode():
    return canonical_jvp_conv(x, kernel, stride, dilation, pad)
  if groups == 1 and flag is not None:
    return canonical_conv(x, kernel, flag, stride, dilation, pad)
  return _conv(x, kernel, stride, dilation, pad, groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def canonical_conv(x, kernel, kernel_grad, stride, dilation, pad):
  """A dense conv whose gradients are themselves NHWC x HWIO -> NHWC convs.

  JAX's transpose rules express the input and kernel gradients as convs with permuted
  dimension labels (kernel 'OI', or batch and features swapped). At the top level of a
  program XLA CPU rewrites those into its fast library convs, but inside a loop body
  (`lax.fori_loop`, `lax.scan`) it leaves them as naive loops: a conv's backward pass ran
  60x slower there (measured, jax 0.10.2). Written out canonically, the gradients run at
  full speed anywhere, which lets one compiled gradient serve several passes of a step.
  `kernel_grad` (bool, Python or traced) False skips the kernel gradient (returns zeros)."""
  del kernel_grad
  return _conv(x, kernel, stride, dilation, pad)


def _canonical_conv_fwd(x, kernel, kernel_grad, stride, dilation, pad):
  return _conv(x, kernel, stride, dilation, pad), (x, kernel, kernel_grad)


def _rows_read(x, span, stride, pad, m):
  """x without the trailing rows/columns that a conv with m outputs never reads, and the high
  padding that then makes its window positions end at the last one read (0 if cropped)."""
  n = x.shape[1]
  hi = span + (m - 1) * stride + 1 - n - pad
  return (x[:, :n + hi, :n + hi], 0) if hi < 0 else (x, hi)


def _canonical_conv_bwd(stride, dilation, pad, residuals, g):
  x, kernel, kernel_grad = residuals
  k, n, m = kernel.shape[0], x.shape[1], g.shape[1]
  span = dilation * (k - 1)
  # d/dx: the transposed conv, i.e. g dilated by the stride, convolved with the kernel
  # flipped in space and with in/out channels swapped (a physical HWIO kernel).
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  lo, hi = span - pad, n - 1 - (m - 1) * stride + pad
  dx = _conv(g, flipped, 1, dilation, [(lo, hi), (lo, hi)], lhs_dilation=stride)

  def kernel_gradient():
    # A conv of x over g with batch and channels exchanged (channels_in act as the batch,
    # the batch as the contracted features); the stride becomes g's dilation.
    xs, hi = _rows_read(x, span, stride, pad, m)
    dk = _conv(xs.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), dilation, stride,
               [(pad, hi), (pad, hi)])
    return dk.transpose(1, 2, 0, 3)

  if isinstance(kernel_grad, bool):
    dk = kernel_gradient() if kernel_grad else jnp.zeros_like(kernel)
  else:
    dk = jax.lax.cond(kernel_grad, kernel_gradient, lambda: jnp.zeros_like(kernel))
  return dx, dk, None


canonical_conv.defvjp(_canonical_conv_fwd, _canonical_conv_bwd)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def canonical_jvp_conv(x, kernel, stride, dilation, pad):
  """`canonical_conv` for forward mode over reverse mode (the exact HVP in the shared loop).

  A `custom_vjp` has no forward-mode rule, so here the JVP is the custom rule and reverse mode
  transposes it. Its tangent convs are written with permuted dimension labels chosen so that
  JAX's transpose rules turn them into exactly `canonical_conv`'s backward convs (NHWC x HWIO
  on physically transposed operands); the primal conv, those transposes and their own JVPs are
  then all canonical. The tangent convs themselves never run: the shared pass differentiates
  every kernel in reverse mode, so they are always transposed (a conv whose inputs reverse mode
  does not reach would run them as written, i.e. slowly, inside a loop)."""
  return _conv(x, kernel, stride, dilation, pad)


_DN = jax.lax.ConvDimensionNumbers


@functools.partial(canonical_jvp_conv.defjvp, symbolic_zeros=True)
def _canonical_jvp_conv_jvp(stride, dilation, pad, primals, tangents):
  x, kernel = primals
  dx, dk = tangents
  y = _conv(x, kernel, stride, dilation, pad)
  span = dilation * (kernel.shape[0] - 1)
  terms = []
  if not isinstance(dx, jax.custom_derivatives.SymbolicZero):
    # The kernel read as HWOI: the transpose swaps O and I back, giving the flipped physical
    # HWIO kernel of `_canonical_conv_bwd`'s input gradient.
    terms.append(jax.lax.conv_general_dilated(
        dx, kernel.transpose(0, 1, 3, 2), (stride, stride), [(pad, pad)] * 2,
        rhs_dilation=(dilation, dilation),
        dimension_numbers=_DN((0, 3, 1, 2), (2, 3, 0, 1), (0, 3, 1, 2))))
  if not isinstance(dk, jax.custom_derivatives.SymbolicZero):
    # x as (C, H, W, N) with N as its features, the kernel tangent as (I, H, W, O), the output
    # as (H, W, N, O): the transpose w.r.t. the kernel is then the batch/feature-exchanged
    # canonical conv of `_canonical_conv_bwd` (rows the forward never reads cropped alike).
    xs, hi = _rows_read(x, span, stride, pad, y.shape[1])
    t = jax.lax.conv_general_dilated(
        xs.transpose(3, 1, 2, 0), dk.transpose(2, 0, 1, 3), (stride, stride),
        [(pad, hi)] * 2, rhs_dilation=(dilation, dilation),
        dimension_numbers=_DN((3, 0, 1, 2), (3, 0, 1, 2), (2, 3, 0, 1)))
    terms.append(t.transpose(2, 0, 1, 3))
  if not terms:
    return y, jnp.zeros_like(y)
  return y, terms[0] if len(terms) == 1 else terms[0] + terms[1]


def _fold(dw, pw):
  """Depthwise (E,k,k,C) (x) pointwise (E,C,D) -> dense kernels (k,k,C,E,D), written as a
  broadcast product in the kernel's own layout: as an einsum it became a batched dot plus a
  transpose copy per kernel, two more kernels for XLA to compile at every shape."""
  return jnp.transpose(dw, (1, 2, 3, 0))[..., None] * jnp.transpose(pw, (1, 0, 2))


def fan_out_dw_pw(x, dw, pw, stride, dilation, form):
  """E edges' depthwise (k x k) + pointwise convs applied to the same input.

  x (B,H,W,C), dw (E,k,k,C), pw (E,C,D) -> (B,H',W',E,D).
  """
  e, k, _, c = dw.shape
  d = pw.shape[-1]
  pad = dilation * (k - 1) // 2
  if form == 'folded':
    kernel = _fold(dw, pw).reshape(k, k, c, e * d)
    out = conv(x, kernel, stride, dilation, pad)
    return out.reshape(out.shape[:3] + (e, d))
  if form == 'shift':
    t = None
    for dy, dx, v in taps(x, k, stride, dilation, pad):
      term = v[..., None, :] * dw[:, dy, dx, :]
      t = term if t is None else t + term
  elif form == 'grouped':
    kernel = jnp.transpose(dw, (1, 2, 3, 0)).reshape(k, k, 1, c * e)  # channel c*E + e
    t = conv(x, kernel, stride, dilation, pad, groups=c)
    t = jnp.swapaxes(t.reshape(t.shape[:3] + (c, e)), -1, -2)
  else:
    raise ValueError(f'unknown conv form {form!r}; valid: {", ".join(FORMS)}')
  return jnp.einsum('bhwec,ecd->bhwed', t, pw)


def per_edge_dw_pw(x, dw, pw, form):
  """Each edge's own depthwise (k x k, stride 1) + pointwise conv on its own input.

  x (B,H,W,E,C), dw (E,k,k,C), pw (E,C,D) -> (B,H,W,E,D).
  """
  e, k, _, c = dw.shape
  pad = (k - 1) // 2
  if form == 'folded':
    return jnp.stack([conv(x[..., i, :], _fold(dw[i:i + 1], pw[i:i + 1])[..., 0, :], 1, 1, pad)
                      for i in range(e)], axis=-2)
  if form == 'shift':
    t = None
    for dy, dx, v in taps(x, k, 1, 1, pad):
      term = v * dw[:, dy, dx, :]
      t = term if t is None else t + term
  elif form == 'grouped':
    flat = x.reshape(x.shape[:3] + (e * c,))
    kernel = dw.transpose(1, 2, 0, 3).reshape(k, k, 1, e * c)
    t = conv(flat, kernel, 1, 1, pad, groups=e * c).reshape(x.shape)
  else:
    raise ValueError(f'unknown conv form {form!r}; valid: {", ".join(FORMS)}')
  return jnp.einsum('bhwec,ecd->bhwed', t, pw)


# ---------------------------------------------------------------------------------- modules


class DilConvFan(nnx.Module):
  """E edges of DARTS' DilConv: ReLU -> depthwise (dilated) -> pointwise -> BN.

  Takes the already-ReLU'd input, which all ops of a source share.
  """

  def __init__(self, c: int, edges: int, k: int, stride: int, dilation: int, form: str,
               rngs: nnx.Rngs):
    self.stride, self.dilation, self.form = stride, dilation, form
    self.dw = param(rngs, (edges, k, k, c), k * k)
    self.pw = param(rngs, (edges, c, c), c)
    self.bn = batch_norm(edges * c, rngs)

  def __call__(self, relu_x, train: bool):
    y = fan_out_dw_pw(relu_x, self.dw[...], self.pw[...], self.stride, self.dilation, self.form)
    return apply_bn(self.bn, y, train)


class SepConvFan(nnx.Module):
  """E edges of DARTS' SepConv: (ReLU, dw, pw, BN) with stride, then (ReLU, dw, pw, BN)."""

  def __init__(self, c: int, edges: int, k: int, stride: int, forms: tuple[str, str],
               rngs: nnx.Rngs):
    self.stride, self.forms = stride, forms
    self.dw1 = param(rngs, (edges, k, k, c), k * k)
    self.pw1 = param(rngs, (edges, c, c), c)
    self.bn1 = batch_norm(edges * c, rngs)
    self.dw2 = param(rngs, (edges, k, k, c), k * k)
    self.pw2 = param(rngs, (edges, c, c), c)
    self.bn2 = batch_norm(edges * c, rngs)

  def __call__(self, relu_x, train: bool):
    y = fan_out_dw_pw(relu_x, self.dw1[...], self.pw1[...], self.stride, 1, self.forms[0])
    y = jax.nn.relu(apply_bn(self.bn1, y, train))
    y = per_edge_dw_pw(y, self.dw2[...], self.pw2[...], self.forms[1])
    return apply_bn(self.bn2, y, train)


class FactorizedReduce(nnx.Module):
  """DARTS' FactorizedReduce for E edges: ReLU, two 1x1 stride-2 convs offset by one pixel,
  concatenated, BN. Takes the already-ReLU'd input."""

  def __init__(self, c_in: int, c_out: int, edges: int, rngs: nnx.Rngs, affine: bool = False):
    if c_out % 2:
      raise ValueError(f'FactorizedReduce needs an even number of output channels, got {c_out}')
    self.w1 = param(rngs, (c_in, edges, c_out // 2), c_in)
    self.w2 = param(rngs, (c_in, edges, c_out // 2), c_in)
    self.bn = batch_norm(edges * c_out, rngs, affine)

  def __call__(self, relu_x, train: bool):
    if relu_x.shape[1] % 2 or relu_x.shape[2] % 2:
      raise ValueError(f'FactorizedReduce needs even height and width, got {relu_x.shape[1:3]}')
    a = jnp.einsum('bhwc,ced->bhwed', relu_x[:, ::2, ::2], self.w1[...])
    b = jnp.einsum('bhwc,ced->bhwed', relu_x[:, 1::2, 1::2], self.w2[...])
    return apply_bn(self.bn, jnp.concatenate([a, b], axis=-1), train)  # (B,H/2,W/2,E,C_out)


class ReLUConvBN(nnx.Module):
  """ReLU -> 1x1 conv -> BN (the cell preprocessing)."""

  def __init__(self, c_in: int, c_out: int, rngs: nnx.Rngs, affine: bool = False):
    self.w = param(rngs, (c_in, c_out), c_in)
    self.bn = batch_norm(c_out, rngs, affine)

  def __call__(self, x, train: bool):
    y = jnp.einsum('bhwc,cd->bhwd', jax.nn.relu(x), self.w[...])
    return self.bn(y, train)
