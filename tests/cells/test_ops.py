"""DARTS ops and the fan-out mixed op, checked against independent computations.

The reference for every op is written here directly from the DARTS operations (grouped
depthwise conv via `feature_group_count`, 1x1 conv, `reduce_window` pooling, batch norm by
hand), one edge at a time, so it shares no code path with the batched forms in cells/ops.py.
"""
import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dnas.cells import darts, ops

pytestmark = pytest.mark.usefixtures('x64')


def _conv(x, w, stride=1, pad=0, dilation=1, groups=1):
  return jax.lax.conv_general_dilated(
      x, w, (stride, stride), [(pad, pad)] * 2, rhs_dilation=(dilation, dilation),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups,
      precision=jax.lax.Precision.HIGHEST)


def _bn(x):
  axes = tuple(range(x.ndim - 1))
  return (x - x.mean(axes)) / jnp.sqrt(x.var(axes) + 1e-5)


def _dw_pw(x, dw, pw, stride, pad, dilation):
  """torch: Conv2d(C, C, k, groups=C) then Conv2d(C, C, 1). dw (k,k,C), pw (C,C)."""
  c = x.shape[-1]
  y = _conv(x, dw[:, :, None, :], stride, pad, dilation, groups=c)
  return jnp.einsum('bhwc,cd->bhwd', y, pw, precision='highest')


def _ref_sep(x, p, e, k, stride):
  r = jax.nn.relu(x)
  y = _bn(_dw_pw(r, p['dw1'][e], p['pw1'][e], stride, k // 2, 1))
  return _bn(_dw_pw(jax.nn.relu(y), p['dw2'][e], p['pw2'][e], 1, k // 2, 1))


def _ref_dil(x, p, e, k, stride):
  return _bn(_dw_pw(jax.nn.relu(x), p['dw'][e], p['pw'][e], stride, k - 1, 2))


def _ref_max(x, stride):
  y = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                            [(0, 0), (1, 1), (1, 1), (0, 0)])
  return _bn(y)


def _ref_avg(x, stride):
  win = ((1, 3, 3, 1), (1, stride, stride, 1), [(0, 0), (1, 1), (1, 1), (0, 0)])
  s = jax.lax.reduce_window(x, 0.0, jax.lax.add, *win)
  n = jax.lax.reduce_window(jnp.ones_like(x), 0.0, jax.lax.add, *win)  # count_include_pad=False
  return _bn(s / n)


def _ref_fr(x, w1, w2, e):
  r = jax.nn.relu(x)
  a = jnp.einsum('bhwc,cd->bhwd', r[:, ::2, ::2], w1[:, e], precision='highest')
  b = jnp.einsum('bhwc,cd->bhwd', r[:, 1::2, 1::2], w2[:, e], precision='highest')
  return _bn(jnp.concatenate([a, b], -1))


@pytest.mark.parametrize('form', ops.FORMS)
@pytest.mark.parametrize('stride', [1, 2])
def test_fan_out_mixed_op_equals_explicit_weighted_sum(form, stride):
  c, edges, b, h = 4, 3, 2, 8
  mixed = darts.FanOutMixedOp(c, edges, stride, darts.PRIMITIVES, form, nnx.Rngs(0))
  mixed = jax.tree.map(lambda v: v.astype(jnp.float64) if hasattr(v, 'astype') else v, mixed)
  x = jax.random.normal(jax.random.key(1), (b, h, h, c), jnp.float64)
  w = jax.nn.softmax(jax.random.normal(jax.random.key(2), (edges, len(darts.PRIMITIVES))), -1)
  out = mixed(x, w, train=True)
  assert out.shape == (b, h // stride, h // stride, edges, c)

  conv = mixed.convs
  sep = {n: {k: getattr(conv[n], k)[...] for k in ('dw1', 'pw1', 'dw2', 'pw2')}
         for n in ('sep_conv_3x3', 'sep_conv_5x5')}
  dil = {n: {k: getattr(conv[n], k)[...] for k in ('dw', 'pw')} for n in ('dil_conv_3x3', 'dil_conv_5x5')}
  for e in range(edges):
    per_op = {
        'none': jnp.zeros_like(out[..., e, :]),
        'max_pool_3x3': _ref_max(x, stride),
        'avg_pool_3x3': _ref_avg(x, stride),
        'skip_connect': x if stride == 1 else _ref_fr(x, mixed.reduce.w1[...],
                                                      mixed.reduce.w2[...], e),
        'sep_conv_3x3': _ref_sep(x, sep['sep_conv_3x3'], e, 3, stride),
        'sep_conv_5x5': _ref_sep(x, sep['sep_conv_5x5'], e, 5, stride),
        'dil_conv_3x3': _ref_dil(x, dil['dil_conv_3x3'], e, 3, stride),
        'dil_conv_5x5': _ref_dil(x, dil['dil_conv_5x5'], e, 5, stride),
    }
    expected = sum(w[e, k] * per_op[name] for k, name in enumerate(darts.PRIMITIVES))
    np.testing.assert_allclose(out[..., e, :], expected, rtol=1e-9, atol=1e-9)


def test_ops_parameter_counts_match_hand_count():
  c, e = 8, 4
  # SepConv: 2 x (depthwise k*k*C + pointwise C*C); DilConv: k*k*C + C*C; no BN affine.
  counts = {'sep_conv_3x3': 2 * (9 * c + c * c), 'sep_conv_5x5': 2 * (25 * c + c * c),
            'dil_conv_3x3': 9 * c + c * c, 'dil_conv_5x5': 25 * c + c * c}
  for stride in (1, 2):
    mixed = darts.FanOutMixedOp(c, e, stride, darts.PRIMITIVES, 'folded', nnx.Rngs(0))
    for name, n in counts.items():
      got = sum(x.size for x in jax.tree.leaves(nnx.state(mixed.convs[name], nnx.Param)))
      assert got == e * n, name
    skip = 0 if stride == 1 else sum(
        x.size for x in jax.tree.leaves(nnx.state(mixed.reduce, nnx.Param)))
    assert skip == (0 if stride == 1 else e * 2 * c * (c // 2))  # FactorizedReduce: 2 x C x C/2
    total = sum(x.size for x in jax.tree.leaves(nnx.state(mixed, nnx.Param)))
    assert total == e * sum(counts.values()) + skip  # pools have no parameters


def test_search_network_parameter_count_matches_reference_formula():
  """Hand count of quark0/darts Network(C=16, 10 classes, 8 layers): stem conv 3*3*3*48 +
  BN affine 2*48; per cell preprocess 1x1 convs (FactorizedReduce: 2 x C_in x C/2); 14 mixed
  ops of C_cell; classifier. Equals the reference's count_parameters convention."""
  def mixed(c, stride):
    n = 2 * (9 * c + c * c) + 2 * (25 * c + c * c) + (9 * c + c * c) + (25 * c + c * c)
    return n + (2 * c * (c // 2) if stride == 2 else 0)

  def expected(C, layers, classes=10, in_ch=3):
    total = 9 * in_ch * 3 * C + 2 * 3 * C
    c_pp, c_p, c = 3 * C, 3 * C, C
    red_prev = False
    for i in range(layers):
      red = i in (layers // 3, 2 * layers // 3)
      c = c * 2 if red else c
      total += 2 * c_pp * (c // 2) if red_prev else c_pp * c
      total += c_p * c
      total += sum(mixed(c, 2 if red and j < 2 else 1) for n in range(4) for j in range(2 + n))
      red_prev = red
      c_pp, c_p = c_p, 4 * c
    return total + c_p * classes + classes

  for C, layers in ((16, 8), (8, 5)):
    net = darts.SearchNetwork(num_classes=10, channels=C, layers=layers, rngs=nnx.Rngs(0))
    got = sum(x.size for x in jax.tree.leaves(nnx.state(net, nnx.Param))) - 2 * 14 * 8
    assert got == expected(C, layers)
  # quark0/darts Network(16, 10, 8): step_time.py prints 1,930,618 parameters (alphas excluded)
  assert expected(16, 8) == 1_930_618
  assert expected(8, 5) == 394_210  # and 394,210 at the small benchmark config


def test_edge_numbering_matches_reference_order():
  seen = sorted(e for s in range(5) for e, _ in darts.edges_from(s))
  assert seen == list(range(14))
  # Reference: node i's edges come from states 0..i+1, numbered consecutively.
  ref = [(i, j) for i in range(4) for j in range(2 + i)]
  for s in range(5):
    for e, node in darts.edges_from(s):
      assert ref[e] == (node, s)


def test_unknown_op_and_relaxation_list_the_valid_names():
  with pytest.raises(ValueError, match='valid ops: none, max_pool_3x3'):
    darts.SearchNetwork(num_classes=10, channels=4, layers=3, primitives=('conv_9x9',),
                        rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='unknown relaxation .*valid names: dirichlet, '
                                       'gumbel_hard, gumbel_softmax, sigmoid, softmax'):
    darts.SearchNetwork(num_classes=10, channels=4, layers=3, relaxation='gumble',
                        rngs=nnx.Rngs(0))


@pytest.mark.parametrize('n,k,stride,dilation,pad', [
    (8, 3, 1, 1, 1), (8, 3, 2, 1, 1), (8, 5, 2, 1, 2), (8, 3, 1, 2, 2), (8, 5, 2, 2, 4),
    (8, 1, 2, 1, 0), (7, 3, 2, 1, 1), (9, 3, 2, 1, 0), (6, 3, 1, 1, 0)])
def test_canonical_conv_gradients_equal_jax_conv_gradients(n, k, stride, dilation, pad):
  """canonical_conv's hand-written backward (canonical NHWC x HWIO convs) against JAX's own conv
  transpose rules, including strides whose last rows the forward pass never reads."""
  rng = np.random.default_rng(n * 100 + k * 10 + stride)
  x, w = rng.standard_normal((2, n, n, 3)), rng.standard_normal((k, k, 3, 4))
  y, vjp = jax.vjp(lambda x, w: ops.canonical_conv(x, w, True, stride, dilation, pad), x, w)
  y_ref, vjp_ref = jax.vjp(lambda x, w: _conv(x, w, stride, pad, dilation), x, w)
  np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
  g = rng.standard_normal(y.shape)
  for got, want in zip(vjp(g), vjp_ref(g)):
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('n,k,stride,dilation,pad', [
    (8, 3, 1, 1, 1), (8, 3, 2, 1, 1), (8, 5, 2, 1, 2), (8, 3, 1, 2, 2), (8, 5, 2, 2, 4),
    (8, 1, 2, 1, 0), (7, 3, 2, 1, 1), (9, 3, 2, 1, 0), (6, 3, 1, 1, 0)])
def test_canonical_jvp_conv_forward_over_reverse_equals_jax_conv(n, k, stride, dilation, pad):
  """canonical_jvp_conv's hand-written tangent rule: reverse mode (its transposes) and
  forward over reverse (a Hessian-vector product, as the exact second-order HVP takes it)
  against JAX's own conv rules, and every conv of that HVP canonical (NHWC x HWIO -> NHWC)."""
  rng = np.random.default_rng(n * 100 + k * 10 + stride + dilation)
  x, w = rng.standard_normal((2, n, n, 3)), 0.5 * rng.standard_normal((k, k, 3, 3))
  vx, vw = rng.standard_normal(x.shape), rng.standard_normal(w.shape)

  def loss(conv, scale, x, w):
    y = jnp.tanh(conv(x, w, stride, dilation, pad)) * scale
    return jnp.sum(jnp.sin(conv(y, w[::-1], 1, 1, 1)))

  ours = lambda s, x, w: loss(ops.canonical_jvp_conv, s, x, w)
  ref = lambda s, x, w: loss(lambda x, w, st, d, p: _conv(x, w, st, p, d), s, x, w)

  def hvp(f, x, w):  # d/dt grad_(scale, x, w) f at (x, w) + t (vx, vw)
    return jax.jvp(lambda x, w: jax.grad(f, (0, 1, 2))(1.3, x, w), (x, w), (vx, vw))

  for got, want in zip(jax.tree.leaves(jax.grad(ours, (0, 1, 2))(1.3, x, w)),
                       jax.tree.leaves(jax.grad(ref, (0, 1, 2))(1.3, x, w))):
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
  for got, want in zip(jax.tree.leaves(hvp(ours, x, w)), jax.tree.leaves(hvp(ref, x, w))):
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
  spec = r'lhs_spec=(\([\d, ]+\)), rhs_spec=(\([\d, ]+\)), out_spec=(\([\d, ]+\))'
  specs = re.findall(spec, str(jax.make_jaxpr(lambda x, w: hvp(ours, x, w))(x, w)))
  canonical = ('(0, 3, 1, 2)', '(3, 2, 0, 1)', '(0, 3, 1, 2)')
  assert len(specs) >= 8 and set(specs) == {canonical}, set(specs)
  ref_specs = re.findall(spec, str(jax.make_jaxpr(lambda x, w: hvp(ref, x, w))(x, w)))
  assert set(ref_specs) != {canonical}  # JAX's own rules permute the labels


def test_kernel_gradient_skipped_only_where_the_flag_is_false():
  """Inside kernel_grads.only_if(flag) the input gradient is unchanged and the kernel
  gradient is the true one or zeros, chosen at run time by the traced flag."""
  from dnas import kernel_grads
  rng = np.random.default_rng(0)
  x, w = rng.standard_normal((2, 8, 8, 3)), rng.standard_normal((3, 3, 3, 4))

  def loss(x, w, flag):
    with kernel_grads.only_if(flag):
      return jnp.sum(jnp.sin(ops.conv(x, w, 2, 1, 1)))

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  gx_ref, gw_ref = jax.grad(lambda x, w: jnp.sum(jnp.sin(_conv(x, w, 2, 1))), (0, 1))(x, w)
  gx, gw = grad(x, w, jnp.array(True))
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-10)
  np.testing.assert_allclose(gw, gw_ref, rtol=1e-10)
  gx, gw = grad(x, w, jnp.array(False))
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-10)
  assert np.abs(gw_ref).max() > 1e-3 and not np.any(gw)


@pytest.mark.parametrize('channels', [7, 24])  # one block of 7; three blocks of 8
def test_materialize_is_the_identity_in_value_and_gradient(channels):
  x = np.random.default_rng(0).standard_normal((2, 5, 5, channels)).astype(np.float32)
  x[0, 0, 0] = 0.0
  np.testing.assert_array_equal(jax.jit(ops.materialize)(x), x)  # bitwise
  g = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
  _, vjp = jax.vjp(ops.materialize, jnp.asarray(x))
  np.testing.assert_array_equal(vjp(jnp.asarray(g))[0], g)


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the XLA CPU fusion behaviour')
def test_materialize_makes_xla_compute_a_cheap_expression_once():
  """A cheap expression read by three consumers: XLA CPU recomputes it inside each of their
  fusions, unless it is materialised. Fails if XLA changes either behaviour (then revisit
  `ops.materialize`)."""
  import re

  def fusions_computing_y(use):
    def f(a, b, c):
      y = a * b + a * c + b * c
      if use:
        y = ops.materialize(y)
      return (jnp.sum(jax.nn.relu(y)), jnp.concatenate([y, y * 2.0], -1),
              jnp.transpose(y, (0, 3, 1, 2)) + 1.0)
    x = jnp.ones((4, 8, 8, 3))
    hlo = jax.jit(f).lower(x, x, x).compile().as_text()
    computations = re.split(r'\n(?=%|ENTRY)', hlo)
    return sum(1 for c in computations
               if c.startswith('%fused') and re.search(r'multiply\(%param[^,]*, %param', c))

  assert fusions_computing_y(False) >= 2
  assert fusions_computing_y(True) == 1


def test_batch_norm_matches_pytorch_semantics_by_hand():
  """Train mode: biased batch variance in the output, running averages with momentum 0.1 and
  the *unbiased* variance (torch.nn.BatchNorm2d); eval mode: the running averages; affine
  scale and bias last. Computed here with numpy from the definitions."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 4, 5, 6)) * 2.0 + 1.5
  bn = ops.BatchNorm(6, affine=True)
  bn.scale.set_value(jnp.asarray(rng.standard_normal(6)))
  bn.bias.set_value(jnp.asarray(rng.standard_normal(6)))
  flat = x.reshape(-1, 6)
  mean, var, n = flat.mean(0), flat.var(0), flat.shape[0]
  scale, bias = np.asarray(bn.scale.get_value()), np.asarray(bn.bias.get_value())
  y = bn(jnp.asarray(x), train=True)
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5) * scale + bias, rtol=1e-10)
  run_mean, run_var = 0.1 * mean, 0.9 + 0.1 * var * n / (n - 1)
  # The running buffers start as float32 (0, 1): 0.9 * 1 carries float32 rounding (~3e-8).
  np.testing.assert_allclose(bn.mean.get_value(), run_mean, rtol=1e-7)
  np.testing.assert_allclose(bn.var.get_value(), run_var, rtol=1e-7)
  y = bn(jnp.asarray(x), train=False)
  np.testing.assert_allclose(y, (x - run_mean) / np.sqrt(run_var + 1e-5) * scale + bias,
                             rtol=1e-7, atol=1e-7)


def test_batch_norms_of_one_shape_share_one_traced_function():
  """The BN arithmetic is traced once per shape (why: cells/ops.py BatchNorm): two BNs of
  one shape and one of another lower to two normalisation functions, not three, and give
  the same result as BN by hand."""
  graphdef, state = nnx.split(nnx.List([ops.BatchNorm(4), ops.BatchNorm(4), ops.BatchNorm(8)]))
  x4 = np.random.default_rng(1).standard_normal((2, 3, 3, 4))
  x8 = np.random.default_rng(2).standard_normal((2, 3, 3, 8))

  def f(state, x4, x8):
    bns = nnx.merge(graphdef, state)
    return bns[0](x4, True) + bns[1](2 * x4, True), bns[2](x8, True)

  text = jax.jit(f).lower(state, x4, x8).as_text()
  assert text.count('func.func private @_normalize_with_batch_stats') == 2
  a, b = jax.jit(f)(state, x4, x8)
  np.testing.assert_allclose(a, _bn(x4) + _bn(2 * x4), rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(b, _bn(x8), rtol=1e-10, atol=1e-12)


def test_bn_vjp_that_keeps_only_its_output_matches_autodiff():
  """The shared passes' BN (cells/ops.py `_normalize_saving_only_output`) against JAX's own
  gradient of the plain formula, for cotangents on all three outputs (y, batch mean, batch
  variance), in float64."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 3, 3, 5)) * 3.0 - 1.0
  cts = (rng.standard_normal(x.shape), rng.standard_normal(5), rng.standard_normal(5))
  out, vjp = jax.vjp(lambda x: ops._normalize_saving_only_output(x, 1e-5), x)
  out_ref, vjp_ref = jax.vjp(lambda x: ops._normalize_with_batch_stats(x, 1e-5), x)
  for got, want in zip(out, out_ref):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(vjp(cts)[0], vjp_ref(cts)[0], rtol=1e-9, atol=1e-10)
  assert np.abs(vjp_ref(cts)[0]).max() > 0.1


def test_batch_norm_takes_the_output_keeping_vjp_only_inside_a_shared_pass():
  """Inside kernel_grads.only_if (reverse mode only) a search BN uses the custom VJP, with
  the same gradient; outside it, and for affine BNs, plain autodiff (which forward mode,
  the exact HVP, needs)."""
  from dnas import kernel_grads
  x = np.random.default_rng(4).standard_normal((2, 4, 4, 3))

  def loss(x, affine, flag):
    bn = ops.BatchNorm(3, affine=affine)
    if flag is None:
      return jnp.sum(jnp.sin(bn(x, True)))
    with kernel_grads.only_if(flag):
      return jnp.sum(jnp.sin(bn(x, True)))

  for affine in (False, True):
    plain = jax.grad(loss)(x, affine, None)
    inside = jax.jit(jax.grad(loss), static_argnums=1)(x, affine, jnp.array(True))
    np.testing.assert_allclose(inside, plain, rtol=1e-9, atol=1e-12)
    text = str(jax.make_jaxpr(lambda x: loss(x, affine, jnp.array(True)))(x))
    assert ('custom_vjp_call' in text) == (not affine)
  assert 'custom_vjp_call' not in str(jax.make_jaxpr(lambda x: loss(x, False, None))(x))

  # Forward over reverse (kernel_grads.forward_mode, the exact HVP's pass): the output-keeping
  # JVP, with plain autodiff's HVP; its batch mean and variance tangents too.
  def stats_loss(x, forward):
    bn = ops.BatchNorm(3)
    with kernel_grads.forward_mode() if forward else contextlib.nullcontext():
      y, mean, var = ops._normalize_tangent_from_output(x, bn.eps) if forward else (
          ops._normalize_with_batch_stats(x, bn.eps))
      return jnp.sum(jnp.sin(bn(x, True))) + jnp.sum(jnp.cos(y) * mean) + jnp.sum(var ** 2)

  v = np.random.default_rng(5).standard_normal(x.shape)
  hvp = lambda f: jax.jvp(jax.grad(f), (x,), (v,))
  for got, want in zip(hvp(lambda x: stats_loss(x, True)), hvp(lambda x: stats_loss(x, False))):
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
  text = str(jax.make_jaxpr(lambda x: stats_loss(x, True))(x))
  assert text.count('custom_jvp_call') == 2 and 'custom_vjp_call' not in text
