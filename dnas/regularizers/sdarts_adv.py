"""SDARTS-ADV (Chen & Hsieh, ICML 2020): adversarial alphas (PGD) in the weight step.

The weight step trains at the alphas that (approximately) maximise the train loss within the
L-infinity ball of radius eps around the current alphas: a random start U(-eps, eps), then
`steps` (7) signed-gradient ascent steps of size 2 eps / steps, each projected back into the
ball; if the result does not raise the loss, the unperturbed alphas are used. eps grows per
epoch from 0.03 to 0.3 as in SDARTS-RS. All from the reference code (`Linf_PGD_alpha` in
attacker/perturb.py and the epsilon schedule of sota/cnn/train_search.py, SmoothDARTS /
Sunshine-Ye/Beta-DARTS).

Differences from the reference code: the perturbation is on the alphas (the reference
perturbs the softmax weights, clipping to [0, 1] and renormalising), and the PGD passes
normalise with the batch's own statistics like every other pass here (the reference
switches the network to eval mode). The `steps` gradient passes are unrolled in the compiled
step: each adds one network gradient to the compile and to the step time.
"""
import jax
import jax.numpy as jnp

from dnas.regularizers import Regularizer, register
from dnas.regularizers.sdarts_rs import epsilon_schedule


@register('sdarts_adv')
class SDARTSAdversarial(Regularizer):
  epsilon_min: float = 0.03
  epsilon_max: float = 0.3
  steps: int = 7
  random_start: bool = True
  total_steps: int | None = None
  steps_per_epoch: int | None = None

  def perturb(self, alphas, *, key, step, loss_fn):
    eps = epsilon_schedule(self, step)
    return pgd_linf(alphas, loss_fn, key=key, epsilon=eps, steps=self.steps,
                    random_start=self.random_start)

  def scalars(self, step):
    return {'epsilon': epsilon_schedule(self, step)}


def pgd_linf(alphas, loss_fn, *, key, epsilon, steps: int, random_start: bool = True):
  """Projected signed-gradient ascent of loss_fn in the L-inf ball of radius epsilon around
  `alphas` (a pytree); falls back to `alphas` if the loss did not rise."""
  step_size = 2 * epsilon / max(steps, 1)
  clip = lambda x, x0: x0 + jnp.clip(x - x0, -epsilon, epsilon)
  x = alphas
  if random_start:
    leaves, treedef = jax.tree.flatten(alphas)
    keys = jax.random.split(key, len(leaves))
    x = jax.tree.unflatten(treedef, [a + jax.random.uniform(k, a.shape, a.dtype, -1.0, 1.0)
                                     * epsilon for a, k in zip(leaves, keys)])
  grad = jax.grad(loss_fn)
  for _ in range(steps):
    g = grad(x)
    x = jax.tree.map(lambda xi, gi, x0: clip(xi + step_size * jnp.sign(gi), x0), x, g, alphas)
  raised = loss_fn(x) > loss_fn(alphas)
  return jax.tree.map(lambda xi, x0: jnp.where(raised, xi, x0), x, alphas)
