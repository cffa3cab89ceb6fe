"""The stand-alone DARTS networks, checked against figures and counts made independently.

Parameter counts: the DARTS paper's 3.3 M (CIFAR, C=36, 20 cells) and 4.7 M (ImageNet
mobile) and a count written here from the reference model.py's construction rules, per op
and per cell (no network built). FLOPs: XLA's cost analysis of a compiled tiny network
against the analytic count. Drop-path and the auxiliary head: their defining behaviour.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dnas.cells import eval_network as en
from dnas.cells import known_genotypes


def _bn(c):
  return 2 * c  # affine scale and bias


def reference_param_count(geno, c, layers, num_classes, stem_multiplier=3):
  """quark0/darts model.py NetworkCIFAR's parameters (auxiliary head excluded), from its
  construction rules: dw k*k*C, pw C*C, every BN affine, FactorizedReduce two C_in x C/2."""
  def op(name, c, stride):
    k = int(name[-1]) if name[-1].isdigit() else 0
    if name.startswith('sep_conv'):
      return 2 * (k * k * c + c * c + _bn(c))
    if name.startswith('dil_conv'):
      return k * k * c + c * c + _bn(c)
    if name == 'skip_connect' and stride == 2:
      return c * c + _bn(c)
    return 0  # pools, identity, none

  c_curr = stem_multiplier * c
  total = 3 * 3 * 3 * c_curr + _bn(c_curr)
  c_pp, c_p, c_curr = c_curr, c_curr, c
  reduction_prev = False
  for i in range(layers):
    reduction = i in (layers // 3, 2 * layers // 3)
    if reduction:
      c_curr *= 2
    total += c_pp * c_curr + _bn(c_curr)  # preprocess0: ReLUConvBN or FactorizedReduce
    total += c_p * c_curr + _bn(c_curr)  # preprocess1
    gene = geno.reduce if reduction else geno.normal
    total += sum(op(name, c_curr, 2 if reduction and j < 2 else 1) for name, j in gene)
    concat = geno.reduce_concat if reduction else geno.normal_concat
    reduction_prev = reduction
    c_pp, c_p = c_p, len(concat) * c_curr
  del reduction_prev
  return total + c_p * num_classes + num_classes


@functools.cache
def paper_model(name: str):
  """The CIFAR network at the paper's size (C=36, 20 cells), built (numpy init, nothing
  compiled; faster than tracing it). The conv form is folded, as the FLOPs test relies on."""
  return en.NetworkCIFAR(known_genotypes.load(name), channels=36, layers=20, auxiliary=True,
                         conv_form='folded', rngs=nnx.Rngs(0))


def test_darts_v2_has_the_papers_3_3m_parameters():
  geno = known_genotypes.load('DARTS_V2')
  model = nnx.eval_shape(lambda: en.NetworkCIFAR(geno, channels=36, layers=20, auxiliary=True,
                                                 rngs=nnx.Rngs(0)))  # shapes only
  n = en.num_params(model)
  assert abs(n - 3.3e6) / 3.3e6 < 0.02, n
  assert n == reference_param_count(geno, 36, 20, 10)
  # The auxiliary head is a separate, uncounted 0.48 M: 1x1 conv 576->128, 2x2 conv
  # 128->768, two affine BNs, linear 768->10.
  head = 576 * 128 + _bn(128) + 2 * 2 * 128 * 768 + _bn(768) + 768 * 10 + 10
  assert en.num_params(model, auxiliary=True) == n + head


@pytest.mark.parametrize('name', ['DARTS_V1', 'PC_DARTS', 'P_DARTS', 'DrNAS'])
def test_every_known_genotype_matches_the_reference_count(name):
  geno = known_genotypes.load(name)
  n = en.num_params(paper_model(name))
  assert n == reference_param_count(geno, 36, 20, 10)
  reported = known_genotypes.source(name)['reported']['params_millions'] * 1e6
  # Papers round to 0.1 M; DARTS_V1's paper row (3.3 M) is the second-order cell's size.
  assert abs(n - reported) / reported < (0.05 if name == 'DARTS_V1' else 0.02), n


def test_darts_v2_imagenet_mobile_has_the_papers_4_7m_parameters():
  model = nnx.eval_shape(lambda: en.NetworkImageNet(known_genotypes.load('DARTS_V2'),
                                                    rngs=nnx.Rngs(0)))
  n = en.num_params(model)
  assert abs(n - 4.7e6) / 4.7e6 < 0.02, n


def _tiny(geno, form, **kw):
  kw = dict(num_classes=10, in_channels=3, image_size=16, channels=4, layers=3,
            auxiliary=True, conv_form=form, rngs=nnx.Rngs(0)) | kw
  return en.NetworkCIFAR(geno, **kw)


def _compile(model, x):
  """(XLA's FLOPs, output) of the compiled eval-mode forward pass."""
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, train=False)[0])
  compiled = fn.lower(state, x).compile()
  cost = compiled.cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)['flops']), compiled(state, x)


def test_analytic_flops_match_xla_cost_analysis():
  """Convs and linear layers are counted exactly (the difference between two conv forms,
  where everything elementwise cancels, agrees to 1 %); the rest of XLA's count is the
  elementwise work (BN, ReLU, adds, pools), a few percent of the total. Both forms compute
  the same network."""
  geno = known_genotypes.load('PC_DARTS')  # every op kind: sep 3/5, dil 3, pools, skip
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  counts, outputs = {}, []
  for form in ('folded', 'grouped'):
    model = _tiny(geno, form, channels=8)
    flops, out = _compile(model, x)
    counts[form] = (flops, en.analytic_flops(model, 2, (16, 16)))
    outputs.append(np.asarray(out))
  np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
  for form, (xla, analytic) in counts.items():
    assert analytic < xla < 1.15 * analytic, (form, xla, analytic)
  xla_diff = counts['folded'][0] - counts['grouped'][0]
  analytic_diff = counts['folded'][1] - counts['grouped'][1]
  assert abs(xla_diff - analytic_diff) < 0.01 * analytic_diff, (xla_diff, analytic_diff)


@pytest.mark.parametrize('name, published', [('DARTS_V2', 528e6), ('PC_DARTS', 558e6),
                                             ('P_DARTS', 532e6)])
def test_paper_multiply_adds_match_published_counts(name, published):
  """Textbook multiply-adds at C=36, 20 cells, 32x32, as xiaomi-automl/FairDARTS lists them
  next to these genotypes (fairdarts/genotypes.py: "528M, 3.3", "558M, 3.63M", "532M, 3.43M")."""
  model = paper_model(name)
  macs = en.conv_macs(model, 1, (32, 32), paper=True)
  assert abs(macs - published) / published < 0.005, macs
  # The form XLA runs on CPU (dw (x) pw folded into one dense conv) costs several times more.
  assert en.conv_macs(model, 1, (32, 32)) > 3 * macs


def test_drop_path_keeps_the_expected_fraction_and_rescales():
  x = jnp.ones((20000, 2, 2, 3))
  y = np.asarray(en.drop_path(x, jax.random.key(0), 0.2))
  per_example = y.reshape(len(y), -1)
  kept = per_example[:, 0] != 0
  # whole examples are kept or dropped together
  assert np.all(per_example[kept] == per_example[kept][:, :1])
  assert np.all(per_example[~kept] == 0)
  # binomial(20000, 0.8): sd = 57 examples; 5 sd
  assert abs(kept.sum() - 16000) < 5 * 57, kept.sum()
  np.testing.assert_allclose(per_example[kept], 1 / 0.8, rtol=1e-6)
  assert abs(y.mean() - 1.0) < 0.02  # unbiased


def test_drop_path_spares_identity_edges():
  # A normal cell made of skips only: drop-path must not touch it (the reference skips
  # Identity ops); one with a pool must drop some examples entirely.
  skips = known_genotypes.load('DARTS_V2').__class__(
      normal=(('skip_connect', 0), ('skip_connect', 1)) * 4, normal_concat=(2, 3, 4, 5),
      reduce=(('max_pool_3x3', 0), ('max_pool_3x3', 1)) * 4, reduce_concat=(2, 3, 4, 5))
  cell = en.Cell(skips, 4, 4, 4, False, False, 'folded', nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (64, 4, 4, 4))
  no_drop = cell(x, x, train=True)
  dropped = cell(x, x, train=True, key=jax.random.key(2), drop_prob=0.9)
  np.testing.assert_allclose(dropped, no_drop, rtol=1e-6)
  pools = skips.__class__(normal=(('max_pool_3x3', 0), ('avg_pool_3x3', 1)) * 4,
                          normal_concat=(2, 3, 4, 5), reduce=skips.reduce,
                          reduce_concat=(2, 3, 4, 5))
  cell = en.Cell(pools, 4, 4, 4, False, False, 'folded', nnx.Rngs(0))
  node0 = np.asarray(cell(x, x, train=True, key=jax.random.key(2), drop_prob=0.9))[..., :4]
  zero_examples = np.all(node0.reshape(64, -1) == 0, axis=1).sum()
  assert 40 < zero_examples < 64  # both ops dropped: 0.81 of the examples


def test_auxiliary_head_exists_only_in_training():
  geno = known_genotypes.load('DARTS_V2')
  model = _tiny(geno, 'folded', image_size=8)
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda s, x, train: nnx.merge(graphdef, s)(x, train=train),
                    static_argnums=2)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  logits, aux = forward(state, x, True)
  assert logits.shape == (4, 10) and aux.shape == (4, 10)
  eval_logits, eval_aux = forward(state, x, False)
  assert eval_aux is None
  # The evaluation output does not depend on the head's weights at all.
  head = model.auxiliary_head
  head.classifier.kernel.set_value(head.classifier.kernel.get_value() + 100.0)
  np.testing.assert_array_equal(forward(nnx.split(model)[1], x, False)[0], eval_logits)
  without = nnx.eval_shape(lambda: _tiny(geno, 'folded', image_size=8, auxiliary=False))
  assert without.auxiliary_head is None
  out = jax.eval_shape(lambda m: m(x, train=True), without)
  assert out[1] is None
