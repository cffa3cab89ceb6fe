"""PC-DARTS (cells/pcdarts.py) against independent computations.

The partial-channel mixed op is checked edge by edge against the reference's recipe written
out here (slice, every op on the slice from test_ops.py's per-edge references, concat with
the (pooled) rest, channel shuffle by a hand permutation); edge normalisation through a cell
of identity ops computed by hand, the edge-normalised genotype against hand-computed
softmaxes, and the supernet's size against a hand-derived count.
"""
import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from dnas import genotype
from dnas.arch import ArchParam
from dnas.cells import darts, nb201, ops, pcdarts
from dnas.trainers import spaces

_spec = importlib.util.spec_from_file_location(
    'test_ops_refs', os.path.join(os.path.dirname(__file__), 'test_ops.py'))
refs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(refs)  # the per-edge op references of test_ops.py


def shuffle_by_hand(x, k):
  """torch channel_shuffle(x, k) as an index list: output channel o is input channel
  (o % k) * (C / k) + o // k."""
  c = x.shape[-1]
  return x[..., [(o % k) * (c // k) + o // k for o in range(c)]]


def to64(module):
  return jax.tree.map(lambda v: v.astype(jnp.float64) if hasattr(v, 'astype') else v, module)


def test_channel_shuffle_is_the_hand_permutation():
  x = np.arange(8.0).reshape(1, 1, 1, 8)
  # view (4 groups, 2) -> transpose -> flatten: [0 1 | 2 3 | 4 5 | 6 7] -> 0 2 4 6 1 3 5 7.
  np.testing.assert_array_equal(pcdarts.channel_shuffle(x, 4)[0, 0, 0], [0, 2, 4, 6, 1, 3, 5, 7])
  np.testing.assert_array_equal(pcdarts.channel_shuffle(np.arange(6.0), 2), [0, 3, 1, 4, 2, 5])
  y = np.random.default_rng(0).standard_normal((2, 3, 3, 2, 12)).astype(np.float32)
  np.testing.assert_array_equal(pcdarts.channel_shuffle(y, 3), shuffle_by_hand(y, 3))
  with pytest.raises(ValueError, match='10 channels do not split into 4 groups'):
    pcdarts.channel_shuffle(np.zeros(10), 4)


@pytest.mark.usefixtures('x64')
@pytest.mark.parametrize('stride', [1, 2])
def test_partial_channel_mixed_op_equals_split_op_concat_shuffle(stride):
  c, k, edges, b, h = 8, 4, 3, 2, 8
  part = c // k
  inner = darts.FanOutMixedOp(part, edges, stride, darts.PRIMITIVES, 'folded', nnx.Rngs(0))
  mixed = to64(pcdarts.PartialChannels(inner, k, stride))
  x = jax.random.normal(jax.random.key(1), (b, h, h, c), jnp.float64)
  w = jax.nn.softmax(jax.random.normal(jax.random.key(2), (edges, len(darts.PRIMITIVES))), -1)
  out = mixed(x, w, train=True)
  assert out.shape == (b, h // stride, h // stride, edges, c)

  m = mixed.mixed_op
  xs, rest = x[..., :part], np.asarray(x[..., part:])
  if stride == 2:  # nn.MaxPool2d(2, 2) on the bypassed channels, by hand
    rest = rest.reshape(b, h // 2, 2, h // 2, 2, c - part).max(axis=(2, 4))
  sep = {n: {p: getattr(m.convs[n], p)[...] for p in ('dw1', 'pw1', 'dw2', 'pw2')}
         for n in ('sep_conv_3x3', 'sep_conv_5x5')}
  dil = {n: {p: getattr(m.convs[n], p)[...] for p in ('dw', 'pw')}
         for n in ('dil_conv_3x3', 'dil_conv_5x5')}
  for e in range(edges):
    per_op = {
        'none': 0.0,
        'max_pool_3x3': refs._ref_max(xs, stride),
        'avg_pool_3x3': refs._ref_avg(xs, stride),
        'skip_connect': xs if stride == 1 else refs._ref_fr(xs, m.reduce.w1[...],
                                                            m.reduce.w2[...], e),
        'sep_conv_3x3': refs._ref_sep(xs, sep['sep_conv_3x3'], e, 3, stride),
        'sep_conv_5x5': refs._ref_sep(xs, sep['sep_conv_5x5'], e, 5, stride),
        'dil_conv_3x3': refs._ref_dil(xs, dil['dil_conv_3x3'], e, 3, stride),
        'dil_conv_5x5': refs._ref_dil(xs, dil['dil_conv_5x5'], e, 5, stride),
    }
    ops_out = sum(w[e, i] * per_op[name] for i, name in enumerate(darts.PRIMITIVES))
    expected = shuffle_by_hand(np.concatenate([ops_out, rest], axis=-1), k)
    np.testing.assert_allclose(out[..., e, :], expected, rtol=1e-9, atol=1e-9)


def test_node_softmax_is_per_node():
  betas = np.log(np.array([1.0, 3.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 4.0]))
  expected = [1 / 4, 3 / 4, 1 / 4, 1 / 4, 2 / 4] + [1 / 4] * 4 + [1 / 8] * 4 + [4 / 8]
  np.testing.assert_allclose(pcdarts.node_softmax(betas, 2, 4), expected, rtol=1e-6)
  np.testing.assert_allclose(pcdarts.node_softmax(np.log([5.0, 1, 3, 1, 1, 2]), 1, 3),
                             [1, 1 / 4, 3 / 4, 1 / 4, 1 / 4, 2 / 4], rtol=1e-6)
  with pytest.raises(ValueError, match=r'4 nodes with 2 inputs need \(14,\)'):
    pcdarts.node_softmax(np.zeros(6), 2, 4)


@pytest.mark.usefixtures('x64')
def test_cell_of_identity_ops_scales_edges_and_splits_channels_by_hand():
  """A normal cell whose only ops are none and skip_connect, K=2, with edge weights: every
  node is sum_edges beta_e * shuffle(concat(w_skip * h[:C/2], h[C/2:])), computed here."""
  c, k = 4, 2
  prims = ('none', 'skip_connect')
  cell = to64(darts.SearchCell(6, 6, c, False, False, prims, 4, 4, {c: 'folded'},
                               nnx.Rngs(0), partial_channels=k))
  rng = np.random.default_rng(3)
  s0, s1 = rng.standard_normal((2, 2, 4, 4, 6))
  w = jax.nn.softmax(rng.standard_normal((14, 2)), -1)
  ew = rng.uniform(0.1, 1.0, 14)
  out = cell(s0, s1, w, train=True, edge_weights=ew)

  states = [np.asarray(cell.preprocess0(s0, True)), np.asarray(cell.preprocess1(s1, True))]
  for node in range(4):
    total = 0.0
    for j in range(2 + node):
      e = darts.edge_index(node, j)
      h = states[j]
      total = total + ew[e] * shuffle_by_hand(
          np.concatenate([w[e, 1] * h[..., :c // k], h[..., c // k:]], -1), k)
    states.append(total)
  np.testing.assert_allclose(out, np.concatenate(states[2:], -1), rtol=1e-10, atol=1e-10)


@pytest.mark.usefixtures('x64')
def test_nb201_cell_of_identity_ops_with_partial_channels_and_edge_weights():
  c, k = 6, 3
  cell = to64(nb201.SearchCell(c, ('none', 'skip_connect'), False, nnx.Rngs(0), k))
  rng = np.random.default_rng(4)
  x = rng.standard_normal((2, 4, 4, c))
  w = jax.nn.softmax(rng.standard_normal((6, 2)), -1)
  ew = rng.uniform(0.1, 1.0, 6)
  out = cell(x, w, train=True, edge_weights=ew)
  nodes = [x]
  for i in range(1, 4):
    nodes.append(sum(ew[e] * shuffle_by_hand(np.concatenate(
        [w[e, 1] * nodes[j][..., :c // k], nodes[j][..., c // k:]], -1), k)
        for e, (t, j) in enumerate(nb201.EDGES) if t == i))
  np.testing.assert_allclose(out, nodes[3], rtol=1e-10, atol=1e-10)


def test_edge_normalised_genotype_by_hand():
  net = darts.SearchNetwork(num_classes=10, channels=4, layers=1, partial_channels=4,
                            edge_normalization=True, rngs=nnx.Rngs(0))
  ops_ = darts.PRIMITIVES
  a_n, a_r = np.zeros((14, 8)), np.zeros((14, 8))
  b_n, b_r = np.zeros(14), np.zeros(14)
  a_n[0, ops_.index('sep_conv_3x3')] = 2.0
  a_n[1, ops_.index('skip_connect')] = 1.0
  # Node 1 (edges 2, 3, 4 from states 0, 1, 2): op weights alone pick edges 2 and 4.
  a_n[2, ops_.index('sep_conv_3x3')] = 2.0   # softmax: e^2 / (e^2 + 7) = 0.5135
  a_n[3, ops_.index('skip_connect')] = 1.0   # e / (e + 7) = 0.2797
  a_n[4, ops_.index('dil_conv_3x3')] = 1.5   # e^1.5 / (e^1.5 + 7) = 0.3903
  b_n[2:5] = np.log([1.0, 3.0, 1.5])         # edge weights 1/5.5, 3/5.5, 1.5/5.5
  b_r[9:14] = [0, 0, 0, 0, 1.0]              # node 3 of the reduce cell prefers state 4
  net.alphas_normal[...], net.alphas_reduce[...] = jnp.asarray(a_n), jnp.asarray(a_r)
  net.betas_normal[...], net.betas_reduce[...] = jnp.asarray(b_n), jnp.asarray(b_r)

  soft = lambda v: math.exp(v) / (math.exp(v) + 7)
  scaled = {2: soft(2) / 5.5, 3: soft(1) * 3 / 5.5, 4: soft(1.5) * 1.5 / 5.5}
  assert scaled[3] > scaled[4] > scaled[2]   # 0.153 > 0.106 > 0.093: edges 3, 4 win
  geno = genotype.derive(*[np.asarray(w) for w in net.genotype_weights()], ops_)
  tie = [('max_pool_3x3', 0), ('max_pool_3x3', 1)]  # equal weights: first inputs, first op
  assert geno.normal == (('sep_conv_3x3', 0), ('skip_connect', 1),
                         ('skip_connect', 1), ('dil_conv_3x3', 2), *tie, *tie)
  assert geno.reduce == (*tie, *tie, *tie, ('max_pool_3x3', 4), ('max_pool_3x3', 0))
  # Without edge weights DARTS' rule keeps edges 2 and 4 of node 1.
  plain = genotype.derive(*[np.asarray(w) for w in net.op_weights()], ops_)
  assert plain.normal[2:4] == (('sep_conv_3x3', 0), ('dil_conv_3x3', 2))


def test_pcdarts_supernet_parameter_count_matches_hand_formula():
  """quark0/darts' count (tests/cells/test_ops.py) with every mixed op at C/K channels: per
  edge 2(9c+c^2) + 2(25c+c^2) + (9c+c^2) + (25c+c^2), plus FactorizedReduce's c^2 on a
  stride-2 edge; preprocessing, stem and classifier at full width; the betas are 2 x 14
  architecture parameters, not weights."""
  def mixed(c, stride):
    return 102 * c + 6 * c * c + (c * c if stride == 2 else 0)

  def expected(C, layers, K, classes=10, in_ch=3):
    total = 9 * in_ch * 3 * C + 2 * 3 * C
    c_pp, c_p, c, red_prev = 3 * C, 3 * C, C, False
    for i in range(layers):
      red = i in (layers // 3, 2 * layers // 3)
      c = c * 2 if red else c
      total += 2 * c_pp * (c // 2) if red_prev else c_pp * c
      total += c_p * c
      total += sum(mixed(c // K, 2 if red and j < 2 else 1) for n in range(4) for j in range(2 + n))
      red_prev, c_pp, c_p = red, c_p, 4 * c
    return total + c_p * classes + classes

  assert expected(8, 5, 1) == 394_210  # K=1 is test_ops.py's (and the reference's) count
  for C, layers in ((8, 5), (16, 8)):
    net = darts.SearchNetwork(num_classes=10, channels=C, layers=layers, partial_channels=4,
                              edge_normalization=True, rngs=nnx.Rngs(0))
    arch = sum(x.size for x in jax.tree.leaves(nnx.state(net, ArchParam)))
    assert arch == 2 * 14 * 8 + 2 * 14
    weights = sum(x.size for x in jax.tree.leaves(nnx.state(net, nnx.Param))) - arch
    assert weights == expected(C, layers, 4)
  assert expected(16, 8, 4) == 299_578  # PC-DARTS' supernet at its paper settings


def test_off_switches_leave_the_supernet_unchanged():
  """partial_channels=1 and edge_normalization=False build exactly the DARTS supernet, same
  initial values (the betas are drawn after everything else)."""
  kw = dict(num_classes=10, channels=4, layers=3, rngs=nnx.Rngs(0))
  plain = nnx.state(darts.SearchNetwork(**kw))
  kw['rngs'] = nnx.Rngs(0)
  off = nnx.state(darts.SearchNetwork(**kw, partial_channels=1, edge_normalization=False))
  assert jax.tree.structure(plain) == jax.tree.structure(off)
  jax.tree.map(np.testing.assert_array_equal, plain, off)
  kw['rngs'] = nnx.Rngs(0)
  en = darts.SearchNetwork(**kw, edge_normalization=True)
  np.testing.assert_array_equal(en.alphas_reduce[...], plain['alphas_reduce'][...])
  assert en.betas_normal[...].shape == (14,) and 0 < np.abs(en.betas_normal[...]).max() < 0.01


@pytest.mark.parametrize('k, message', [
    (3, r'partial_channels K=3 must divide the channel count of every cell of the DARTS '
        r'supernet \(C\), but \[4\] is not divisible by 3: choose channels that are a multiple '
        r'of 3, or another K'),
    (0, r'partial_channels must be an integer K >= 1 \(1: off, 4: PC-DARTS\), got 0'),
    ('4', r"partial_channels must be an integer K >= 1 \(1: off, 4: PC-DARTS\), got '4'"),
    (True, r'partial_channels must be an integer K >= 1'),
])
def test_bad_partial_channels_name_the_problem(k, message):
  with pytest.raises(ValueError, match=message):
    darts.SearchNetwork(num_classes=10, channels=4, layers=1, partial_channels=k,
                        rngs=nnx.Rngs(0))


def test_bad_values_name_the_problem():
  with pytest.raises(ValueError, match="edge_normalization must be True or False, got 'yes'"):
    nb201.SearchNetwork(num_classes=10, channels=4, cells_per_stage=1,
                        edge_normalization='yes', rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r'NB201 supernet \(C\), but \[6\] is not divisible by 4'):
    nb201.SearchNetwork(num_classes=10, channels=6, cells_per_stage=1, partial_channels=4,
                        rngs=nnx.Rngs(0))
  mixed = pcdarts.PartialChannels(lambda h, w: h[..., None, :], 2, 2)
  with pytest.raises(ValueError, match=r'needs an even feature map, got 7x7'):
    mixed(jnp.zeros((1, 7, 7, 4)), None)


def _config(**model):
  c = ml_collections.ConfigDict({'relaxation': 'softmax', 'regularizers': (),
                                 'regularizer_args': {}})
  c.model = dict(space='darts', channels=8, layers=1, num_nodes=4, conv_form='auto',
                 primitives=darts.PRIMITIVES, **model)
  return c


def test_space_config_checks_and_identity():
  assert spaces.pcdarts_settings(_config()) == {'partial_channels': 1,
                                                'edge_normalization': False}
  with pytest.raises(ValueError, match=r'config.model.partial_channels K=3 must divide .* '
                                       r'config.model.channels=8, but \[8\]'):
    spaces.get('darts').check(_config(partial_channels=3))
  with pytest.raises(ValueError, match='config.model.edge_normalization must be True or False'):
    spaces.get('darts').check(_config(edge_normalization=1))
  c = _config(partial_channels=4, edge_normalization=True)
  c.regularizers = ('beta_decay',)
  with pytest.raises(ValueError, match=r"config.regularizers \['beta_decay'\] read every "
                                       r'architecture parameter as op alphas'):
    spaces.get('darts').check(c)
  c.regularizers = ('darts_minus',)
  spaces.get('darts').check(c)  # edge modifications only: allowed
  assert spaces.get('darts').describe(c) == ('DARTS space (1 cells, C=8, partial channels '
                                             '1/4, edge normalisation)')
  # Off values stay out of the workdir identity (older workdirs still match); on values in.
  assert 'partial_channels' not in spaces.model_identity(_config(partial_channels=1,
                                                                 edge_normalization=False))
  assert spaces.model_identity(c)['partial_channels'] == 4
