"""beta-DARTS (Ye et al., CVPR 2022): the beta-decay regularisation of the alphas.

    L_beta = lambda(epoch) * mean over edges (of every cell type) of logsumexp_k(alpha_edge,k)

added to the architecture (val) loss only. Its gradient is softmax(alpha): it pulls every
alpha down in proportion to its weight, keeping the op weights from saturating.
Defaults from the reference code (Sunshine-Ye/Beta-DARTS, optimizers/darts/architect.py,
`mlc_loss` and `weights = 0 + 50*epoch/100`): lambda grows linearly per epoch from
`weight_start` (0) to `weight_end`; for the DARTS space's 50-epoch search that code reaches
50 * 49/100 = 24.5, so `weight_end` defaults to 25 at the (never reached) epoch `epochs`:
lambda(epoch) = weight_start + (weight_end - weight_start) * epoch / epochs.
"""
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from dnas.regularizers import Regularizer, register


@register('beta_decay')
class BetaDecay(Regularizer):
  weight_start: float = 0.0
  weight_end: float = 25.0
  total_steps: int | None = None
  steps_per_epoch: int | None = None

  def coefficient(self, step):
    frac = self.epoch(step) / self.epochs()
    return self.weight_start + (self.weight_end - self.weight_start) * frac

  def loss(self, alphas, step):
    per_edge = jnp.concatenate([logsumexp(a, axis=-1) for a in alphas])
    return self.coefficient(step) * jnp.mean(per_edge)

  def scalars(self, step):
    return {'lambda': self.coefficient(step)}
