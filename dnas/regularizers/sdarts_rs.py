"""SDARTS-RS (Chen & Hsieh, ICML 2020): random smoothing of the alphas in the weight step.

The weight step trains at alpha + delta, delta ~ U(-eps, eps) elementwise, a fresh draw every
step; the architecture step and the stored alphas are unperturbed. eps grows linearly per
epoch from `epsilon_min` (0.03) to `epsilon_max` (0.3): eps(epoch) = 0.03 + (0.3 - 0.03) *
epoch / epochs, the reference code's schedule (sota/cnn/train_search.py of SmoothDARTS and of
Sunshine-Ye/Beta-DARTS, `--epsilon_alpha 0.3`).

Difference from the reference code: it perturbs the *softmax weights* (then clips them to
[0, 1] and renormalises each edge); here delta is added to the alphas themselves, so it
works with every relaxation. Same radius schedule.
"""
import jax

from dnas.regularizers import Regularizer, register


def epsilon_schedule(reg, step):
  return reg.epsilon_min + (reg.epsilon_max - reg.epsilon_min) * reg.epoch(step) / reg.epochs()


@register('sdarts_rs')
class SDARTSRandomSmoothing(Regularizer):
  epsilon_min: float = 0.03
  epsilon_max: float = 0.3
  total_steps: int | None = None
  steps_per_epoch: int | None = None

  def perturb(self, alphas, *, key, step, loss_fn):
    del loss_fn
    eps = epsilon_schedule(self, step)
    leaves, treedef = jax.tree.flatten(alphas)
    keys = jax.random.split(key, len(leaves))
    noisy = [a + jax.random.uniform(k, a.shape, a.dtype, -1.0, 1.0) * eps
             for a, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)

  def scalars(self, step):
    return {'epsilon': epsilon_schedule(self, step)}
