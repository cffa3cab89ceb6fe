"""Relaxations against their formulas, computed here independently in numpy / scipy.

Deterministic ones: the formula. Stochastic ones: with a fixed key, the formula applied to the
documented noise (jax.random.gumbel / gamma draws of that key); over many keys, the sample
mean against the expectation (within 5 standard errors). GDAS: the straight-through gradient
against the softmax Jacobian. Then the plumbing: config args, user modules, the supernet's
op weights / genotype weights / loss term, on one tiny network (forward only, no compile).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
from flax import nnx

from dnas import arch, bilevel, genotype, relaxations
from dnas.cells import darts

# One xdist worker runs this module (pytest -n 2 --dist loadgroup), so the supernet fixture
# is built once.
pytestmark = pytest.mark.xdist_group('relaxations')

BUILTINS = ('dirichlet', 'gumbel_hard', 'gumbel_softmax', 'sigmoid', 'softmax')
ALPHAS = np.array([[0.3, -1.2, 0.8, 0.0, 1.5],
                   [-0.4, 0.2, 2.0, -2.0, 0.1],
                   [1.0, 1.0, -0.5, 0.7, -1.1]], np.float32)
N_KEYS = 10000


def np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def samples(relax, alphas, step=0, n=N_KEYS):
  keys = jax.random.split(jax.random.key(7), n)
  return np.asarray(jax.jit(jax.vmap(lambda k: relax.weights(alphas, key=k, step=step)))(keys))


def assert_mean_close(draws, expected, var=None):
  """Sample mean within 5 standard errors (of `var` if given, else the sample variance)."""
  n = len(draws)
  se = np.sqrt((draws.var(0) if var is None else var) / n)
  err = np.abs(draws.mean(0) - expected)
  assert np.all(err <= 5 * se + 1e-6), (err / se).max()


# ------------------------------------------------------------------------------ the formulas


def test_all_builtins_are_registered():
  assert set(BUILTINS) <= set(relaxations.names())


@pytest.mark.parametrize('temperature', [1.0, 0.3])
def test_softmax_with_temperature(temperature):
  relax = relaxations.make('softmax', {'temperature': temperature})
  got = relax.weights(jnp.asarray(ALPHAS), key=None, step=None)
  np.testing.assert_allclose(got, np_softmax(ALPHAS / temperature), rtol=1e-5)
  np.testing.assert_allclose(relax.genotype_weights(ALPHAS), got, rtol=1e-5)
  assert relax.loss(ALPHAS) == 0.0


def test_sigmoid_weights_are_independent():
  relax = relaxations.make('sigmoid')
  got = np.asarray(relax.weights(jnp.asarray(ALPHAS), key=jax.random.key(0), step=3))
  np.testing.assert_allclose(got, 1 / (1 + np.exp(-ALPHAS)), rtol=1e-5)
  # No normalisation: raising one op's alpha leaves the others' weights unchanged.
  bumped = np.asarray(relax.weights(jnp.asarray(ALPHAS).at[:, 0].add(3.0), key=None, step=None))
  np.testing.assert_array_equal(bumped[:, 1:], got[:, 1:])


@pytest.mark.parametrize('name, tau_max, tau_min', [('gumbel_softmax', 1.0, 0.03),
                                                    ('gumbel_hard', 10.0, 0.1)])
def test_temperature_schedule_is_linear_over_the_search(name, tau_max, tau_min):
  relax = relaxations.make(name, total_steps=101)
  assert (relax.tau_max, relax.tau_min) == (tau_max, tau_min)  # the papers' defaults
  for step, want in ((0, tau_max), (50, (tau_max + tau_min) / 2), (100, tau_min),
                     (150, tau_min)):
    np.testing.assert_allclose(float(relax.temperature(jnp.int32(step))), want, rtol=1e-5)
  with pytest.raises(ValueError, match='anneals over the search.*total_steps'):
    relaxations.make(name).weights(ALPHAS, key=jax.random.key(0), step=0)


def test_gumbel_softmax_with_a_fixed_key():
  relax = relaxations.make('gumbel_softmax', total_steps=11)
  key, step = jax.random.key(3), 4
  got = relax.weights(jnp.asarray(ALPHAS), key=key, step=jnp.int32(step))
  g = np.asarray(jax.random.gumbel(key, ALPHAS.shape))
  tau = 1.0 + (0.03 - 1.0) * step / 10
  np.testing.assert_allclose(got, np_softmax((ALPHAS + g) / tau), rtol=1e-5, atol=1e-7)
  # Deterministic weights (evaluation, genotype): the op probabilities softmax(alphas).
  np.testing.assert_allclose(relax.weights(ALPHAS, key=None, step=None), np_softmax(ALPHAS),
                             rtol=1e-5)


def test_gumbel_softmax_mean_matches_the_concrete_expectation():
  """Two ops: w_0 = sigmoid((d + x) / tau), x = g_0 - g_1 ~ Logistic(0, 1), d = a_0 - a_1;
  E[w_0] by quadrature of that one-dimensional integral."""
  tau = 0.5
  relax = relaxations.make('gumbel_softmax', {'tau_max': tau, 'tau_min': tau}, total_steps=2)
  alphas = np.array([[0.0, 0.0], [1.0, -0.5], [-2.0, 0.3]], np.float32)
  draws = samples(relax, jnp.asarray(alphas))
  expected = []
  for d in alphas[:, 0] - alphas[:, 1]:
    f = lambda x: scipy.special.expit((d + x) / tau) * scipy.stats.logistic.pdf(x)
    expected.append(scipy.integrate.quad(f, -60, 60)[0])
  assert_mean_close(draws[:, :, 0], np.array(expected))


def test_gumbel_hard_samples_one_op_with_the_softmax_probabilities():
  relax = relaxations.make('gumbel_hard', total_steps=10)
  key = jax.random.key(11)
  got = np.asarray(relax.weights(jnp.asarray(ALPHAS), key=key, step=jnp.int32(2)))
  g = np.asarray(jax.random.gumbel(key, ALPHAS.shape))
  np.testing.assert_allclose(got, np.eye(5)[np.argmax(ALPHAS + g, -1)], atol=1e-6)
  draws = samples(relax, jnp.asarray(ALPHAS))
  assert set(np.unique(np.round(draws, 5))) == {0.0, 1.0}
  p = np_softmax(ALPHAS)
  assert_mean_close(draws, p, var=p * (1 - p))  # one-hot frequencies -> probabilities


def test_gumbel_hard_straight_through_gradient_is_the_softmax_gradient():
  """d/dalpha L(hard) = J_softmax((alpha + g) / tau)^T dL/dw, with dL/dw taken at the hard
  (one-hot) weights: J^T c = p * (c - <p, c>) / tau."""
  total, step = 10, 6
  relax = relaxations.make('gumbel_hard', total_steps=total)
  key = jax.random.key(5)
  c = np.linspace(-1.0, 2.0, ALPHAS.size, dtype=np.float32).reshape(ALPHAS.shape)
  loss = lambda w: jnp.sum(c * w) + 0.5 * jnp.sum(w ** 2)  # cotangent depends on w
  grad = jax.grad(lambda a: loss(relax.weights(a, key=key, step=jnp.int32(step))))(
      jnp.asarray(ALPHAS))
  g = np.asarray(jax.random.gumbel(key, ALPHAS.shape))
  tau = 10.0 + (0.1 - 10.0) * step / (total - 1)
  p = np_softmax((ALPHAS + g) / tau)
  cot = c + np.eye(5)[np.argmax(ALPHAS + g, -1)]
  want = p * (cot - (p * cot).sum(-1, keepdims=True)) / tau
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)
  assert np.abs(want).max() > 1e-3


def test_dirichlet_with_a_fixed_key_is_normalised_gamma_draws():
  relax = relaxations.make('dirichlet')
  key = jax.random.key(2)
  beta = np.where(ALPHAS > 0, ALPHAS + 1, np.exp(ALPHAS))  # elu(alpha) + 1
  got = np.asarray(relax.weights(jnp.asarray(ALPHAS), key=key, step=0))
  gam = np.asarray(jax.random.gamma(key, jnp.asarray(beta)))
  np.testing.assert_allclose(got, gam / gam.sum(-1, keepdims=True), rtol=1e-4)
  np.testing.assert_allclose(relax.weights(ALPHAS, key=None, step=None),
                             beta / beta.sum(-1, keepdims=True), rtol=1e-5)
  np.testing.assert_allclose(relax.genotype_weights(ALPHAS), beta / beta.sum(-1, keepdims=True),
                             rtol=1e-5)


def test_dirichlet_sample_mean_and_reparameterised_gradient():
  relax = relaxations.make('dirichlet')
  beta = np.where(ALPHAS > 0, ALPHAS + 1, np.exp(ALPHAS))
  b0 = beta.sum(-1, keepdims=True)
  mean = beta / b0
  draws = samples(relax, jnp.asarray(ALPHAS))
  assert_mean_close(draws, mean, var=mean * (1 - mean) / (b0 + 1))
  # d E[<c, w>] / d alpha through the samples equals the gradient of <c, mean(alpha)>.
  c = np.linspace(-1.0, 1.0, 5, dtype=np.float32)
  keys = jax.random.split(jax.random.key(9), N_KEYS)
  per_key = jax.jit(jax.vmap(jax.grad(
      lambda a, k: jnp.sum(c * relax.weights(a, key=k, step=0))), in_axes=(None, 0)))
  grads = np.asarray(per_key(jnp.asarray(ALPHAS), keys))
  dbeta = np.where(ALPHAS > 0, 1.0, np.exp(ALPHAS))
  want = dbeta * (c - (mean * c).sum(-1, keepdims=True)) / b0  # d<c, beta/b0>/d alpha
  assert_mean_close(grads, want)
  assert np.abs(want).max() > 0.05


def test_dirichlet_kl_regulariser_matches_monte_carlo():
  """KL(Dir(beta) || Dir(1)) = E_q[log q - log p], estimated with numpy draws and scipy."""
  relax = relaxations.make('dirichlet', {'kl_weight': 0.5, 'prior': 1.0})
  beta = np.where(ALPHAS > 0, ALPHAS + 1, np.exp(ALPHAS)).astype(np.float64)
  rng = np.random.default_rng(0)
  kls, ses = [], []
  for b in beta:
    x = rng.dirichlet(b, 50000)
    x = np.clip(x, 1e-300, None)
    x /= x.sum(-1, keepdims=True)
    d = scipy.stats.dirichlet.logpdf(x.T, b) - scipy.stats.dirichlet.logpdf(x.T, np.ones(5))
    kls.append(d.mean())
    ses.append(d.std() / np.sqrt(len(d)))
  got = float(relax.loss(jnp.asarray(ALPHAS)))
  assert abs(got - 0.5 * sum(kls)) <= 5 * 0.5 * np.sqrt(np.sum(np.square(ses))), (got, kls)
  assert float(relaxations.make('dirichlet', {'kl_weight': 0.0}).loss(ALPHAS)) == 0.0
  # Zero exactly at the prior: elu(0) + 1 = 1.
  np.testing.assert_allclose(float(relax.loss(jnp.zeros((3, 5)))), 0.0, atol=1e-5)


# ---------------------------------------------------------------------- config and registry


def test_unknown_name_and_hyperparameter_list_the_valid_ones():
  with pytest.raises(ValueError, match="unknown relaxation 'gumble'; valid names: dirichlet, "
                                       'gumbel_hard, gumbel_softmax, sigmoid, softmax'):
    relaxations.make('gumble')
  with pytest.raises(ValueError, match=r"'gumbel_hard' has no hyperparameter\(s\) \['tau'\]; "
                                       'valid: tau_max, tau_min'):
    relaxations.make('gumbel_hard', {'tau': 1.0})
  with pytest.raises(ValueError, match="'sigmoid' has no hyperparameter.*valid: none"):
    relaxations.make('sigmoid', {'temperature': 2.0})
  with pytest.raises(ValueError, match='total_steps is set by the search'):
    relaxations.make('gumbel_hard', {'total_steps': 5})
  with pytest.raises(TypeError, match='subclass of dnas.relaxations.Relaxation'):
    relaxations.register('not_a_class')(lambda alphas, *, key, step: alphas)
  with pytest.raises(ValueError, match="relaxation 'softmax' is already registered"):
    relaxations.register('softmax')(type('Again', (relaxations.Relaxation,), {}))


def test_args_from_a_configdict_override_the_defaults():
  import ml_collections
  relax = relaxations.make('gumbel_hard', ml_collections.ConfigDict({'tau_min': 0.5}),
                           total_steps=7)
  assert (relax.tau_max, relax.tau_min, relax.total_steps) == (10.0, 0.5, 7)
  assert relaxations.make('softmax', total_steps=7) == relaxations.make('softmax')


def test_user_module_from_a_file_registers_once(tmp_path):
  path = tmp_path / 'user_relax.py'
  path.write_text(
      'import jax\n'
      'from dnas import relaxations\n\n'
      "@relaxations.register('test_user_square')\n"
      'class Square(relaxations.Relaxation):\n'
      '  power: float = 2.0\n'
      '  def weights(self, alphas, *, key, step):\n'
      '    w = jax.nn.softmax(alphas) ** self.power\n'
      '    return w / w.sum(-1, keepdims=True)\n')
  relaxations.load_module(str(path))
  relaxations.load_module(str(path))  # a second load (check_config runs twice) is a no-op
  relax = relaxations.make('test_user_square', {'power': 3.0})
  want = np_softmax(ALPHAS) ** 3
  np.testing.assert_allclose(relax.weights(ALPHAS, key=None, step=None),
                             want / want.sum(-1, keepdims=True), rtol=1e-5)
  with pytest.raises(ValueError, match="cannot import relaxation_module .*no such file"):
    relaxations.load_module(str(tmp_path / 'missing.py'))
  with pytest.raises(ValueError, match="cannot import relaxation_module 'no_such_pkg.relax' "
                                       r'\(ModuleNotFoundError'):
    relaxations.load_module('no_such_pkg.relax')


# ------------------------------------------------------------------ the supernet's plumbing


@pytest.fixture(scope='module')
def net():
  """One normal-free supernet (1 reduction cell, 2 nodes, C=4): forward passes run eagerly."""
  model = darts.SearchNetwork(num_classes=3, in_channels=1, channels=4, layers=1, num_nodes=2,
                              multiplier=2, conv_form='folded', rngs=nnx.Rngs(0))
  for seed, a in enumerate((model.alphas_normal, model.alphas_reduce)):
    a[...] = jax.random.normal(jax.random.key(seed), a.shape)
  batch = {'image': jax.random.normal(jax.random.key(1), (4, 8, 8, 1)),
           'label': jnp.array([0, 1, 2, 0])}
  return model, batch


@pytest.mark.parametrize('name', BUILTINS)
def test_supernet_uses_the_relaxation(net, name):
  model, batch = net
  model.relaxation = relax = relaxations.make(name, total_steps=10)
  a_n, a_r = model.alphas_normal[...], model.alphas_reduce[...]
  key, step = jax.random.key(4), jnp.int32(3)
  w_n, w_r = model.op_weights(key, step)
  k1, k2 = jax.random.split(key)
  np.testing.assert_allclose(w_n, relax.weights(a_n, key=k1, step=step), rtol=1e-5)
  np.testing.assert_allclose(w_r, relax.weights(a_r, key=k2, step=step), rtol=1e-5)
  g_n, g_r = model.genotype_weights()
  np.testing.assert_allclose(g_r, relax.genotype_weights(a_r), rtol=1e-5)
  geno = genotype.derive(np.asarray(g_n), np.asarray(g_r), darts.PRIMITIVES, num_nodes=2)
  assert len(geno.reduce) == 4
  logits = model(batch['image'], train=True, key=key, step=step)  # one eager forward
  assert logits.shape == (4, 3) and bool(jnp.all(jnp.isfinite(logits)))


def test_search_loss_adds_the_relaxation_term(net):
  """classification_loss = cross-entropy + the relaxation's loss (DrNAS's KL): the same key
  gives the same sample, so two kl_weights differ by exactly the regulariser."""
  model, batch = net
  losses = {}
  for kl_weight in (0.0, 0.25):
    model.relaxation = relaxations.make('dirichlet', {'kl_weight': kl_weight})
    graphdef, alphas, stats, weights = arch.split(model)
    loss_fn = bilevel.classification_loss(graphdef)
    losses[kl_weight] = float(loss_fn(weights, alphas, stats, batch, jax.random.key(8), 0)[0])
  relax = relaxations.make('dirichlet', {'kl_weight': 0.25})
  want = float(relax.loss(model.alphas_normal[...]) + relax.loss(model.alphas_reduce[...]))
  assert want > 0.01
  np.testing.assert_allclose(losses[0.25] - losses[0.0], want, rtol=1e-4)
