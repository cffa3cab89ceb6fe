"""FairDARTS (Chu et al., ECCV 2020): the zero-one loss, pushing sigmoid op weights to 0 or 1.

    L_01 = -weight * mean over every (edge, op) of both cell types of (sigmoid(alpha) - 0.5)^2

added to the architecture (val) loss. Needs the `sigmoid` relaxation (the op weights it
pushes apart are sigmoid(alpha)). Default weight 10, the L2 form: the reference code
(xiaomi-automl/FairDARTS, fairdarts/separate_loss.py `ConvSeparateLoss`,
train_search.py `--aux_loss_weight 10`).
"""
import jax
import jax.numpy as jnp

from dnas.regularizers import Regularizer, register


@register('zero_one')
class ZeroOne(Regularizer):
  requires_relaxation = 'sigmoid'
  weight: float = 10.0

  def loss(self, alphas, step):
    del step
    w = jnp.concatenate([jax.nn.sigmoid(a).reshape(-1) for a in alphas])
    return -self.weight * jnp.mean((w - 0.5) ** 2)
