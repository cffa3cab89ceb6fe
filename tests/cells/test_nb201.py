"""The NAS-Bench-201 cells and networks against an independent numpy forward pass and
hand-derived parameter counts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dnas import arch, nb201_string, relaxations
from dnas.cells import nb201

ALL_CONV3 = '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|'
MIXED = '|nor_conv_1x1~0|+|skip_connect~0|nor_conv_3x3~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|'
NO_WEIGHTS = '|skip_connect~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|skip_connect~2|'


# ------------------------------------------------------------ independent numpy reference


def np_conv(x, w, stride, pad):
  """x (B,H,W,C), w (k,k,C,D): a plain strided, zero-padded cross-correlation."""
  b, h, wd, _ = x.shape
  k = w.shape[0]
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
  out = np.zeros((b, ho, wo, w.shape[-1]))
  for dy in range(k):
    for dx in range(k):
      patch = xp[:, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride]
      out += patch @ w[dy, dx]
  return out


def np_avg_pool_3x3(x):
  """AvgPool2d(3, 1, padding=1, count_include_pad=False)."""
  ones = np.ones(x.shape[:3] + (1,))
  total = np_conv(x, np.ones((3, 3, 1, 1)) * np.eye(x.shape[-1])[None, None], 1, 1)
  count = np_conv(ones, np.ones((3, 3, 1, 1)), 1, 1)
  return total / count


def np_bn(y, scale=None, bias=None):
  """Training-mode BN: batch mean and biased variance over (B, H, W), eps 1e-5."""
  mean, var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
  out = (y - mean) / np.sqrt(var + 1e-5)
  if scale is not None:
    out = out * scale + bias
  return out


relu = lambda x: np.maximum(x, 0)
val = lambda v: np.asarray(v[...], np.float64)


def np_cell(x, weights, primitives, conv_fn):
  """The reference cell: node i = sum over j < i, over ops k, of weights[edge(i,j), k] *
  op_k(node j); `conv_fn(edge, op, h)` computes a conv op. Ops with weight 0 are skipped."""
  nodes = [x]
  for i in range(1, 4):
    total = np.zeros_like(x)
    for e, (target, j) in enumerate([(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]):
      if target != i:
        continue
      h = nodes[j]
      for k, op in enumerate(primitives):
        w = weights[e, k]
        if w == 0 or op == 'none':
          continue
        if op == 'skip_connect':
          out = h
        elif op == 'avg_pool_3x3':
          out = np_avg_pool_3x3(h)
        else:
          out = conv_fn(e, op, h)
        total = total + w * out
    nodes.append(total)
  return nodes[-1]


def search_kernels(cell: nb201.SearchCell):
  """edge -> op -> (k,k,C,C) kernel, read from the fan-out storage of a search cell."""
  kernels = {}
  for source, fan in enumerate(cell.fan_out):
    for i, (e, _) in enumerate(nb201.edges_from(source)):
      kernels[e] = {name: val(w)[i] for name, w in fan.convs.items()}
  return kernels


def search_conv_fn(cell):
  kernels = search_kernels(cell)
  return lambda e, op, h: np_bn(np_conv(relu(h), kernels[e][op], 1, kernels[e][op].shape[0] // 2))


def infer_conv_fn(cell: nb201.InferCell):
  def fn(e, op, h):
    m = cell.convs[f'edge{e}']
    assert val(m.w).shape[0] == nb201.CONV_KERNEL[op]
    return np_bn(np_conv(relu(h), val(m.w), 1, val(m.w).shape[0] // 2), val(m.bn.scale),
                 val(m.bn.bias))
  return fn


def np_reduction(x, block: nb201.ResidualReduction):
  a = np_bn(np_conv(relu(x), val(block.conv_a.w), 2, 1), val(block.conv_a.bn.scale),
            val(block.conv_a.bn.bias))
  b = np_bn(np_conv(relu(a), val(block.conv_b.w), 1, 1), val(block.conv_b.bn.scale),
            val(block.conv_b.bn.bias))
  n, h, w, c = x.shape
  pooled = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
  return pooled @ val(block.down) + b


def np_network(x, net, cell_fn):
  s = np_bn(np_conv(x, val(net.stem_w), 1, 1), val(net.stem_bn.scale), val(net.stem_bn.bias))
  for cell in net.cells:
    s = np_reduction(s, cell) if isinstance(cell, nb201.ResidualReduction) else cell_fn(cell, s)
  s = relu(np_bn(s, val(net.last_bn.scale), val(net.last_bn.bias)))
  return s.mean(axis=(1, 2)) @ val(net.classifier.kernel) + val(net.classifier.bias)


def softmax(a):
  e = np.exp(a - a.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# ------------------------------------------------------------------------------ mixed op


@pytest.mark.parametrize('track', [False, True])
def test_search_cell_is_the_explicit_weighted_sum_of_every_op(track):
  c = 3
  cell = nb201.SearchCell(c, nb201.PRIMITIVES, track, nnx.Rngs(0))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 6, 6, c)).astype(np.float32)
  weights = rng.normal(size=(6, 5)).astype(np.float32)  # any weights, not only a softmax
  out = np.asarray(cell(jnp.asarray(x), jnp.asarray(weights), train=True))
  ref = np_cell(x.astype(np.float64), weights.astype(np.float64), nb201.PRIMITIVES,
                search_conv_fn(cell))
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_search_cell_subset_of_ops_follows_the_column_order():
  prims = ('nor_conv_3x3', 'skip_connect', 'none')
  cell = nb201.SearchCell(2, prims, False, nnx.Rngs(1))
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 5, 5, 2)).astype(np.float32)
  weights = rng.uniform(size=(6, 3)).astype(np.float32)
  out = np.asarray(cell(jnp.asarray(x), jnp.asarray(weights), train=True))
  ref = np_cell(x.astype(np.float64), weights.astype(np.float64), prims, search_conv_fn(cell))
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_untracked_cell_bns_use_batch_statistics_in_evaluation_too():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(4, 6, 6, 2)).astype(np.float32))
  w = jnp.asarray(rng.uniform(size=(6, 5)).astype(np.float32))
  untracked = nb201.SearchCell(2, nb201.PRIMITIVES, False, nnx.Rngs(0))
  assert not jax.tree.leaves(nnx.state(untracked, nnx.BatchStat))
  np.testing.assert_allclose(untracked(x, w, train=False), untracked(x, w, train=True), atol=1e-6)
  tracked = nb201.SearchCell(2, nb201.PRIMITIVES, True, nnx.Rngs(0))
  # 3 sources x 2 conv ops, each one BN over (E * C) channels: mean + var each.
  assert len(jax.tree.leaves(nnx.state(tracked, nnx.BatchStat))) == 12
  fresh = np.asarray(tracked(x, w, train=False))  # running stats (0, 1): differs from batch stats
  assert np.abs(fresh - np.asarray(tracked(x, w, train=True))).max() > 1e-2


# ---------------------------------------------------------------------- whole networks


def test_search_network_forward_matches_numpy_with_softmax_weights():
  net = nb201.SearchNetwork(num_classes=5, in_channels=1, channels=2, cells_per_stage=1,
                            rngs=nnx.Rngs(3))
  alphas = np.random.default_rng(3).normal(size=(6, 5)).astype(np.float32)
  net.alphas[...] = jnp.asarray(alphas)
  x = np.random.default_rng(4).normal(size=(2, 8, 8, 1)).astype(np.float32)
  out = np.asarray(net(jnp.asarray(x), train=True))
  w = softmax(alphas.astype(np.float64))
  ref = np_network(x.astype(np.float64), net,
                   lambda cell, s: np_cell(s, w, nb201.PRIMITIVES, search_conv_fn(cell)))
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
  assert net.derive_arch() == nb201_string.format([nb201.PRIMITIVES[k] for k in alphas.argmax(1)])


@pytest.mark.parametrize('arch_string', [MIXED, NO_WEIGHTS])
def test_standalone_network_matches_numpy_with_one_hot_edges(arch_string):
  net = nb201.Network(arch_string, num_classes=4, in_channels=1, channels=2, cells_per_stage=2,
                      rngs=nnx.Rngs(5))
  x = np.random.default_rng(6).normal(size=(2, 8, 8, 1)).astype(np.float32)
  out = np.asarray(net(jnp.asarray(x), train=True))
  one_hot = np.zeros((6, 5))
  for e, op in enumerate(nb201_string.parse(arch_string)):
    one_hot[e, nb201.PRIMITIVES.index(op)] = 1.0
  ref = np_network(x.astype(np.float64), net,
                   lambda cell, s: np_cell(s, one_hot, nb201.PRIMITIVES, infer_conv_fn(cell)))
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
  assert net.arch == arch_string


def test_a_node_with_only_none_inputs_is_zero():
  arch_string = '|none~0|+|skip_connect~0|nor_conv_3x3~1|+|none~0|none~1|nor_conv_1x1~2|'
  cell = nb201.InferCell(nb201_string.parse(arch_string), 2, nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 2)), jnp.float32)
  # node1 = 0; node2 = x + conv3(0) (ReLU(0) = 0, conv 0, BN of a constant: 0); node3 = conv1(node2)
  m = cell.convs['edge5']
  ref = np_bn(np_conv(relu(np.asarray(x, np.float64)), val(m.w), 1, 0))
  np.testing.assert_allclose(np.asarray(cell(x, train=True)), ref, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------- parameter counts


def macro_params(c, in_channels, num_classes):
  """Everything but the cells: stem conv + affine BN, two residual reduction blocks (two
  3x3 ReLUConvBNs with affine BN + a 1x1 shortcut conv), final affine BN, classifier."""
  stem = 9 * in_channels * c + 2 * c
  reduction = lambda ci, co: 9 * ci * co + 2 * co + 9 * co * co + 2 * co + ci * co
  return (stem + reduction(c, 2 * c) + reduction(2 * c, 4 * c) + 2 * 4 * c
          + 4 * c * num_classes + num_classes)


def test_nb201_all_conv3x3_network_has_the_benchmark_size():
  # C=16, N=5, CIFAR-10. Per cell: 6 edges x (3x3 conv 9c^2 + affine BN 2c).
  #   stage 1 (c=16): 5 x 6 x (9*256 + 32)   =    70,080
  #   stage 2 (c=32): 5 x 6 x (9*1024 + 64)  =   278,400
  #   stage 3 (c=64): 5 x 6 x (9*4096 + 128) = 1,109,760
  # stem 3*3*3*16 + 32 = 464; reductions 16->32: 4608 + 64 + 9216 + 64 + 512 = 14,464,
  # 32->64: 18432 + 128 + 36864 + 128 + 2048 = 57,600; final BN 128; classifier 64*10 + 10 = 650.
  # Total 1,531,546: the largest NB201 network (1.53 MB in the benchmark).
  assert 464 + 70080 + 14464 + 278400 + 57600 + 1109760 + 128 + 650 == 1531546
  assert macro_params(16, 3, 10) == 464 + 14464 + 57600 + 128 + 650
  net = nnx.eval_shape(lambda: nb201.Network(ALL_CONV3, rngs=nnx.Rngs(0)))
  assert nb201.num_params(net) == 1531546


@pytest.mark.parametrize('arch_string, c, n, in_channels, classes, cell_params', [
    # one 1x1 conv (c^2 + 2c) and two 3x3 convs (2 x (9c^2 + 2c)); c=4: 24 + 2*152 = 328 at c
    (MIXED, 4, 1, 1, 10, lambda c: (c * c + 2 * c) + 2 * (9 * c * c + 2 * c)),
    # skip / pool / none only: no weights in any cell
    (NO_WEIGHTS, 8, 3, 3, 100, lambda c: 0),
    # ResNet-like: two 3x3 convs
    ('|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|', 16, 5,
     3, 10, lambda c: 2 * (9 * c * c + 2 * c)),
])
def test_standalone_parameter_count(arch_string, c, n, in_channels, classes, cell_params):
  net = nb201.Network(arch_string, num_classes=classes, in_channels=in_channels, channels=c,
                      cells_per_stage=n, rngs=nnx.Rngs(0))
  expected = macro_params(c, in_channels, classes) + n * sum(
      cell_params(c * 2 ** s) for s in range(3))
  assert nb201.num_params(net) == expected
  if arch_string == MIXED:
    # Cells 19c^2 + 6c: 328 (c=4) + 1,264 (c=8) + 4,960 (c=16); macro: stem 36 + 8,
    # reductions 288+16+576+16+32 = 928 and 1152+32+2304+32+128 = 3,648, BN 32, classifier 170.
    assert expected == 328 + 1264 + 4960 + 44 + 928 + 3648 + 32 + 170 == 11374


def test_search_network_parameter_count():
  # Search cells: every edge has a 1x1 (c^2) and a 3x3 (9c^2) conv, non-affine BNs (no
  # parameters): 6 x 10c^2 per cell. C=4, N=2, 1 input channel, 10 classes:
  #   cells 2 x 60 x (16 + 64 + 256) = 40,320; macro 44 + 928 + 3,648 + 32 + 170 = 4,822
  #   (see test_standalone_parameter_count) -> 45,142; the alphas are not counted.
  net = nb201.SearchNetwork(num_classes=10, in_channels=1, channels=4, cells_per_stage=2,
                            rngs=nnx.Rngs(0))
  assert macro_params(4, 1, 10) == 4822
  assert nb201.num_params(net) == 40320 + 4822 == 45142
  graphdef, alphas, batch_stats, weights = arch.split(net)
  assert [a.shape for a in jax.tree.leaves(alphas)] == [(6, 5)]
  assert sum(x.size for x in jax.tree.leaves(weights)) == 45142
  # Stem, 2 x 2 reduction BNs and the final BN keep statistics; untracked cell BNs do not.
  assert len(jax.tree.leaves(batch_stats)) == 6 * 2


# -------------------------------------------------------------------- relaxations, errors


def test_relaxation_weights_drive_the_cells():
  relax = relaxations.make('gumbel_hard', total_steps=10)
  net = nb201.SearchNetwork(num_classes=3, in_channels=1, channels=2, cells_per_stage=1,
                            relaxation=relax, rngs=nnx.Rngs(0))
  w = np.asarray(net.op_weights(jax.random.key(0), 0))
  assert w.shape == (6, 5) and np.all(w.sum(1) == 1) and np.all(w.max(1) == 1)
  np.testing.assert_allclose(net.genotype_weights(), softmax(np.asarray(net.alphas[...])),
                             rtol=1e-6)
  x = jnp.ones((2, 8, 8, 1))
  a = net(x, train=True, key=jax.random.key(0), step=0)
  b = net(x, train=True, key=jax.random.key(0), step=0)
  np.testing.assert_array_equal(a, b)
  assert float(net.relaxation_loss()) == 0.0


def test_bad_inputs_name_the_problem():
  with pytest.raises(ValueError, match=r"unknown NAS-Bench-201 op\(s\) \['sep_conv_3x3'\]"):
    nb201.SearchNetwork(num_classes=2, primitives=('none', 'sep_conv_3x3'), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="only 'none'"):
    nb201.check_primitives(('none',))
  with pytest.raises(ValueError, match='repeats an op'):
    nb201.check_primitives(('skip_connect', 'skip_connect'))
  with pytest.raises(nb201_string.ArchStringError, match='node group'):
    nb201.Network('|nor_conv_3x3~0|', rngs=nnx.Rngs(0))
  net = nb201.Network(NO_WEIGHTS, num_classes=2, in_channels=1, channels=2, cells_per_stage=1,
                      rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='even feature map, got 5x5'):
    net(jnp.ones((1, 10, 10, 1)), train=False)
