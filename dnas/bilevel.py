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
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from dnas import kernel_grads, unrolled
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


def with_alpha_term(loss_fn: LossFn, alpha_loss_term: Callable | None) -> LossFn:
  """loss_fn plus `alpha_loss_term(alphas, step)`, a regularizer's term on the alphas."""
  if alpha_loss_term is None:
    return loss_fn

  def loss_with_term(weights, alphas, batch_stats, batch, key, step):
    loss, aux = loss_fn(weights, alphas, batch_stats, batch, key, step)
    return loss + alpha_loss_term(alphas, step), aux
  return loss_with_term


@dataclasses.dataclass(frozen=True)
class FirstOrder:
  """DARTS' first-order architecture gradient, grad_alpha L_val(w, alpha) at the current w.

  `search_step` computes it in the gradient pass it shares with the weight step
  (`_shared_passes`); called directly it is `first_order_alpha_gradient`. The val loss is
  `loss_fn` plus `alpha_loss_term(alphas, step)` (regularizers' terms, which move only the
  alphas); the weight step sees `loss_fn` alone."""
  loss_fn: LossFn
  alpha_loss_term: Callable | None = None

  def __call__(self, state: SearchState, train_batch, val_batch, key):
    return first_order_alpha_gradient(
        state, train_batch, val_batch, key,
        loss_fn=with_alpha_term(self.loss_fn, self.alpha_loss_term))


def alpha_gradient_fn(order: int, *, loss_fn: LossFn, alpha_loss_term: Callable | None = None,
                      hvp: str | None = None, xi: float | Callable | None = None,
                      momentum: float = 0.9, weight_decay: float = 3e-4,
                      fd_radius: float = unrolled.FD_RADIUS):
  """The architecture-gradient function for `bilevel.order` 1 or 2 (see dnas/unrolled.py).
  `loss_fn` is the train loss; `alpha_loss_term(alphas, step)` joins the val loss only.

  Settings that the chosen order does not use are an error, never silently ignored."""
  if order == 1:
    if hvp is not None or xi is not None:
      raise ValueError('bilevel.hvp and bilevel.xi only apply to second order: set '
                       '--config.bilevel.order=2 or leave them unset')
    return FirstOrder(loss_fn, alpha_loss_term)
  if order == 2:
    if xi is None:
      raise ValueError('second order needs xi, the virtual step size (the weight lr schedule '
                       'in the paper)')
    # The term depends on the alphas only, so adding it to both losses of the unrolled
    # gradient changes only the val part.
    return functools.partial(unrolled.alpha_gradient,
                             loss_fn=with_alpha_term(loss_fn, alpha_loss_term), xi=xi,
                             momentum=momentum, weight_decay=weight_decay,
                             hvp=unrolled.check_hvp(hvp or 'finite_difference'),
                             fd_radius=fd_radius)
  raise ValueError(f'bilevel.order must be 1 (first order) or 2 (unrolled), got {order!r}')


def search_step(state: SearchState, train_batch, val_batch, *, loss_fn: LossFn,
                weight_tx: optax.GradientTransformation,
                alpha_tx: optax.GradientTransformation, alpha_gradient: Callable | None = None,
                weight_step_alphas: Callable | None = None):
  """One DARTS step: architecture step, then weight step at the new alphas.

  `alpha_gradient` (from `alpha_gradient_fn`) picks first or second order; default first
  order on `loss_fn`. First order without `weight_step_alphas`, with train and val batches
  of one shape, runs both halves as two passes of one compiled gradient (`_shared_passes`).
  `weight_step_alphas(alphas, *, key, step, loss_fn) -> alphas` (optional, e.g. SDARTS'
  perturbations, dnas/regularizers) gives the alphas the weight step trains at; `loss_fn`
  there is the train loss at the current weights as a function of the alphas. The state
  keeps the unperturbed alphas.
  Returns (new state, metrics dict of scalars)."""
  if alpha_gradient is None:
    alpha_gradient = FirstOrder(loss_fn)
  rng, key_alpha, key_weight = jax.random.split(state.rng, 3)

  same_shapes = (jax.tree.map(jnp.shape, train_batch) == jax.tree.map(jnp.shape, val_batch))
  if isinstance(alpha_gradient, FirstOrder) and weight_step_alphas is None and same_shapes:
    alphas, alpha_opt_state, alpha_grads, (val_loss, val_logits), (
        train_loss, train_logits, batch_stats, weight_grads) = _shared_passes(
            state, train_batch, val_batch, key_alpha, key_weight, loss_fn=loss_fn,
            alpha_loss_term=alpha_gradient.alpha_loss_term, alpha_tx=alpha_tx)
    extra = {}
  else:
    # 1. Architecture step on the val batch; its BN running-stat updates are discarded.
    alpha_grads, val_loss, val_logits, extra = alpha_gradient(state, train_batch, val_batch,
                                                              key_alpha)
    updates, alpha_opt_state = alpha_tx.update(alpha_grads, state.alpha_opt_state,
                                               state.alphas)
    alphas = optax.apply_updates(state.alphas, updates)

    # 2. Weight gradient on the train batch, at the new alphas (or alphas derived from them).
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

  # 3. The weight step.
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


def _shared_passes(state: SearchState, train_batch, val_batch, key_alpha, key_weight, *,
                   loss_fn: LossFn, alpha_loss_term: Callable | None,
                   alpha_tx: optax.GradientTransformation):
  """Both halves of a first-order step as two iterations of one compiled gradient.

  Pass 0 differentiates L_val (+ `alpha_loss_term`) at (w, alpha) and takes the Adam step on
  alpha; pass 1 differentiates L_train at (w, alpha'). Each pass computes the gradient w.r.t. both weights
  and alphas, so XLA compiles the network's forward and backward graph once instead of twice
  (half the compile time and half the live activations); the price is pass 0's unused weight
  gradient, of which the conv kernels' part is skipped at run time (dnas/kernel_grads.py).
  The numbers are those of the two separate halves: pass 0's BN update is dropped,
  each pass has its own PRNG key. Needs convs whose gradients run at full speed inside a loop
  (cells/ops.py `canonical_conv`).

  Returns (alphas', alpha_opt_state', alpha_grads, (val_loss, val_logits),
  (train_loss, train_logits, batch_stats', weight_grads))."""
  def pass_loss(weights, alphas, batch_stats, batch, key, step, is_arch_pass):
    loss, aux = loss_fn(weights, alphas, batch_stats, batch, key, step)
    if alpha_loss_term is not None:  # val loss only; a function of the alphas only
      loss = loss + jnp.where(is_arch_pass, alpha_loss_term(alphas, step), 0.0)
    return loss, aux

  grad_fn = jax.value_and_grad(pass_loss, argnums=(0, 1), has_aux=True)
  batches = jax.tree.map(lambda v, t: jnp.stack([v, t]), val_batch, train_batch)
  keys = jnp.stack([key_alpha, key_weight])

  def one_pass(carry, inputs):
    alphas, alpha_opt_state = carry
    is_arch_pass, batch, key = inputs
    with kernel_grads.only_if(jnp.logical_not(is_arch_pass)):
      (loss, (logits, batch_stats)), (weight_grads, alpha_grads) = grad_fn(
          state.weights, alphas, state.batch_stats, batch, key, state.step, is_arch_pass)
    updates, new_opt_state = alpha_tx.update(alpha_grads, alpha_opt_state, alphas)
    stepped = optax.apply_updates(alphas, updates), new_opt_state
    carry = jax.tree.map(lambda new, old: jnp.where(is_arch_pass, new, old), stepped, carry)
    return carry, (loss, logits, batch_stats, weight_grads, alpha_grads)

  (alphas, alpha_opt_state), (loss, logits, batch_stats, weight_grads, alpha_grads) = (
      jax.lax.scan(one_pass, (state.alphas, state.alpha_opt_state),
                   (jnp.array([True, False]), batches, keys)))
  pick = lambda tree, i: jax.tree.map(lambda x: x[i], tree)
  return (alphas, alpha_opt_state, pick(alpha_grads, 0), (loss[0], logits[0]),
          (loss[1], logits[1], pick(batch_stats, 1), pick(weight_grads, 1)))


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
