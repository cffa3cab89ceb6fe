"""The DARTS bilevel step as pure functions of the search state.

DARTS (Liu et al., 2019) alternates, every step, between
  1. an architecture step: alphas <- alphas - Adam(d L_val(w, alphas) / d alphas), on a batch
     of the held-out half of the data, weights fixed;
  2. a weight step: w <- w - SGD(d L_train(w, alphas') / d w), on a training batch, with the
     alphas just updated.
First order approximates the architecture gradient by the gradient at the current weights;
second order differentiates through one virtual weight step (dnas/unrolled.py).

Batch statistics: both halves normalise with their own batch's statistics (train mode, as in
the reference). Running averages are updated by the weight step only, so the held-out
batches never leak into the BN state that evaluation uses.

`loss_fn(weights, alphas, batch_stats, batch, key, step) -> (loss, (logits, new_batch_stats))`
is supplied by the search space; nothing here knows about cells or ops.
"""
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from dnas import unrolled
from dnas.state import SearchState

LossFn = Callable


def accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def first_order_alpha_gradient(state: SearchState, train_batch, val_batch, key, *,
                               loss_fn: LossFn):
  """grad_alpha L_val(w, alpha) at the current weights (DARTS' first-order approximation).
  Returns (grads, val_loss, val_logits, extra metrics); the val pass's BN update is dropped."""
  del train_batch
  (val_loss, (val_logits, _)), grads = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(
      state.weights, state.alphas, state.batch_stats, val_batch, key, state.step)
  return grads, val_loss, val_logits, {}


def alpha_gradient_fn(order: int, *, loss_fn: LossFn, hvp: str | None = None,
                      xi: float | Callable | None = None, momentum: float = 0.9,
                      weight_decay: float = 3e-4, fd_radius: float = unrolled.FD_RADIUS):
  """The architecture-gradient function for `bilevel.order` 1 or 2 (see dnas/unrolled.py).

  Settings that the chosen order does not use are an error, never silently ignored."""
  if order == 1:
    if hvp is not None or xi is not None:
      raise ValueError('bilevel.hvp and bilevel.xi only apply to second order: set '
                       '--config.bilevel.order=2 or leave them unset')
    return functools.partial(first_order_alpha_gradient, loss_fn=loss_fn)
  if order == 2:
    if xi is None:
      raise ValueError('second order needs xi, the virtual step size (the weight lr schedule '
                       'in the paper)')
    return functools.partial(unrolled.alpha_gradient, loss_fn=loss_fn, xi=xi,
                             momentum=momentum, weight_decay=weight_decay,
                             hvp=unrolled.check_hvp(hvp or 'finite_difference'),
                             fd_radius=fd_radius)
  raise ValueError(f'bilevel.order must be 1 (first order) or 2 (unrolled), got {order!r}')


def search_step(state: SearchState, train_batch, val_batch, *, loss_fn: LossFn,
                weight_tx: optax.GradientTransformation,
                alpha_tx: optax.GradientTransformation, alpha_gradient: Callable | None = None,
                weight_step_alphas: Callable | None = None):
  """One DARTS step: architecture step, then weight step at the new alphas.

  `alpha_gradient` (from `alpha_gradient_fn`) picks first or second order; default first.
  `weight_step_alphas(alphas, *, key, step, loss_fn) -> alphas` (optional, e.g. SDARTS'
  perturbations, dnas/regularizers) gives the alphas the weight step trains at; `loss_fn`
  there is the train loss at the current weights as a function of the alphas. The state
  keeps the unperturbed alphas.
  Returns (new state, metrics dict of scalars)."""
  if alpha_gradient is None:
    alpha_gradient = functools.partial(first_order_alpha_gradient, loss_fn=loss_fn)
  rng, key_alpha, key_weight = jax.random.split(state.rng, 3)

  # 1. Architecture step on the val batch; its BN running-stat updates are discarded.
  alpha_grads, val_loss, val_logits, extra = alpha_gradient(state, train_batch, val_batch,
                                                            key_alpha)
  updates, alpha_opt_state = alpha_tx.update(alpha_grads, state.alpha_opt_state, state.alphas)
  alphas = optax.apply_updates(state.alphas, updates)

  # 2. Weight step on the train batch, at the new alphas (or at alphas derived from them).
  weight_alphas = alphas
  if weight_step_alphas is not None:
    key_weight, key_alphas = jax.random.split(key_weight)
    train_loss_at = lambda a: loss_fn(state.weights, a, state.batch_stats, train_batch,
                                      key_weight, state.step)[0]
    weight_alphas = jax.lax.stop_gradient(weight_step_alphas(
        alphas, key=key_alphas, step=state.step, loss_fn=train_loss_at))
  (train_loss, (train_logits, batch_stats)), weight_grads = jax.value_and_grad(
      loss_fn, argnums=0, has_aux=True)(state.weights, weight_alphas, state.batch_stats,
                                        train_batch, key_weight, state.step)
  updates, weight_opt_state = weight_tx.update(weight_grads, state.weight_opt_state,
                                               state.weights)
  weights = optax.apply_updates(state.weights, updates)

  new_state = state.replace(step=state.step + 1, weights=weights, alphas=alphas,
                            batch_stats=batch_stats, weight_opt_state=weight_opt_state,
                            alpha_opt_state=alpha_opt_state, rng=rng)
  metrics = {
      'train_loss': train_loss,
      'train_accuracy': accuracy(train_logits, train_batch['label']),
      'val_loss': val_loss,
      'val_accuracy': accuracy(val_logits, val_batch['label']),
      'weight_grad_norm': optax.tree.norm(weight_grads),
      'alpha_grad_norm': optax.tree.norm(alpha_grads),
      **extra,
  }
  return new_state, metrics


def weight_optimizer(*, learning_rate, momentum: float = 0.9, weight_decay: float = 3e-4,
                     grad_clip: float = 5.0) -> optax.GradientTransformation:
  """DARTS' weight optimizer, in PyTorch's order: clip the loss gradient's global norm,
  add L2 weight decay to the gradient, SGD with (heavy-ball) momentum."""
  return optax.chain(optax.clip_by_global_norm(grad_clip),
                     optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum))


def alpha_optimizer(*, learning_rate: float = 3e-4, b1: float = 0.5, b2: float = 0.999,
                    weight_decay: float = 1e-3) -> optax.GradientTransformation:
  """DARTS' architecture optimizer: Adam with L2 decay added to the gradient (torch.optim.Adam's
  `weight_decay`, not AdamW's decoupled decay)."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.adam(learning_rate, b1=b1, b2=b2))


def cosine_per_epoch(base_lr: float, min_lr: float, epochs: int, steps_per_epoch: int):
  """torch's CosineAnnealingLR(T_max=epochs, eta_min=min_lr) stepped once per epoch."""
  def schedule(step):
    epoch = jnp.minimum(step // steps_per_epoch, epochs)
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + jnp.cos(jnp.pi * epoch / epochs))
  return schedule


def classification_loss(graphdef, extra_loss: Callable | None = None) -> LossFn:
  """Cross-entropy loss of an nnx model given as split parts (see dnas.arch.split), plus
  the model's `relaxation_loss()` if it has one (a relaxation's regulariser, e.g. DrNAS's
  KL: a function of the alphas only, so it moves the alphas and leaves the weight step),
  plus `extra_loss(alphas, step)` if given (regularizers' terms on the alphas; the search
  passes it to the architecture gradient only)."""
  from flax import nnx
  from dnas import arch

  def loss_fn(weights, alphas, batch_stats, batch, key, step):
    model = arch.merge(graphdef, alphas, batch_stats, weights)
    logits = model(batch['image'], train=True, key=key, step=step)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
    if hasattr(model, 'relaxation_loss'):
      loss = loss + model.relaxation_loss()
    if extra_loss is not None:
      loss = loss + extra_loss(alphas, step)
    return loss, (logits, nnx.state(model, nnx.BatchStat))
  return loss_fn
