"""DrNAS (Chen et al., 2021): op weights sampled from a Dirichlet, reparameterised.

Per edge, concentration beta = elu(alphas) + 1 (positive, as the reference code) and weights
~ Dir(beta), drawn by `jax.random.dirichlet`: gamma samples with implicit
reparameterisation gradients, so d weights / d alphas flows through the sample.
Deterministic weights and the genotype: the mean, beta / sum(beta). (The reference reads its
genotype off softmax(alphas): the same op on every edge, both being monotone in the alphas;
the ranking of edges may differ.)

Loss: kl_weight * sum over edges of KL(Dir(beta) || Dir(prior)), the reference's
`reg_type='kl'` (anchor Dir(1), reg_scale 1e-3). Its default `reg_type='l2'` is only the
Adam weight decay on the alphas (`optim.arch_weight_decay`, 1e-3 here too): kl_weight=0.
"""
import jax
import jax.numpy as jnp
from jax.scipy.special import digamma, gammaln

from dnas.relaxations import Relaxation, register


def concentration(alphas):
  return jax.nn.elu(alphas) + 1.0


def dirichlet_kl(a, b):
  """KL(Dir(a) || Dir(b)) over the last axis."""
  a0, b0 = a.sum(-1), b.sum(-1)
  return (gammaln(a0) - gammaln(a).sum(-1) - gammaln(b0) + gammaln(b).sum(-1)
          + ((a - b) * (digamma(a) - digamma(a0)[..., None])).sum(-1))


@register('dirichlet')
class Dirichlet(Relaxation):
  kl_weight: float = 1e-3
  prior: float = 1.0

  def weights(self, alphas, *, key, step):
    del step
    beta = concentration(alphas)
    if key is None:
      return beta / beta.sum(-1, keepdims=True)
    return jax.random.dirichlet(key, beta, dtype=alphas.dtype)

  def loss(self, alphas):
    if not self.kl_weight:
      return 0.0
    beta = concentration(alphas)
    return self.kl_weight * dirichlet_kl(beta, jnp.full_like(beta, self.prior)).sum()
