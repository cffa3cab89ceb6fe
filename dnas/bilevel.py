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
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from dnas import passes, unrolled
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


@dataclasses.dataclass(frozen=True)
class Unrolled:
  """DARTS' second-order architecture gradient (dnas/unrolled.py). With finite differences,
  `search_step` runs its five passes as iterations of one compiled gradient
  (`_unrolled_passes`); called directly it is `unrolled.alpha_gradient`."""
  loss_fn: LossFn
  alpha_loss_term: Callable | None
  xi: float | Callable
  momentum: float
  weight_decay: float
  hvp: str
  fd_radius: float

  def __call__(self, state: SearchState, train_batch, val_batch, key):
    # The term depends on the alphas only, so adding it to both losses of the unrolled
    # gradient changes only the val part.
    return unrolled.alpha_gradient(
        state, train_batch, val_batch, key,
        loss_fn=with_alpha_term(self.loss_fn, self.alpha_loss_term), xi=self.xi,
        momentum=self.momentum, weight_decay=self.weight_decay, hvp=self.hvp,
        fd_radius=self.fd_radius)


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
    return Unrolled(loss_fn, alpha_loss_term, xi=xi, momentum=momentum,
                    weight_decay=weight_decay, hvp=unrolled.check_hvp(hvp or 'finite_difference'),
                    fd_radius=fd_radius)
  raise ValueError(f'bilevel.order must be 1 (first order) or 2 (unrolled), got {order!r}')


def search_step(state: SearchState, train_batch, val_batch, *, loss_fn: LossFn,
                weight_tx: optax.GradientTransformation,
                alpha_tx: optax.GradientTransformation, alpha_gradient: Callable | None = None,
                weight_step_alphas: Callable | None = None, update_alphas=True):
  """One DARTS step: architecture step, then weight step at the new alphas.

  `alpha_gradient` (from `alpha_gradient_fn`) picks first or second order; default first
  order on `loss_fn`. Without `weight_step_alphas`, with train and val batches of one shape,
  first and second order run all their gradient passes as iterations of one compiled
  gradient (dnas/passes.py).
  `weight_step_alphas(alphas, *, key, step, loss_fn) -> alphas` (optional, e.g. SDARTS'
  perturbations, dnas/regularizers) gives the alphas the weight step trains at; `loss_fn`
  there is the train loss at the current weights as a function of the alphas. The state
  keeps the unperturbed alphas.
  `update_alphas` (a bool, may be traced) False skips the architecture step: alphas and
  their optimizer state stay as they are and the weight step trains at them (a warm-up that
  trains only the weights, as PC-DARTS' first 15 epochs). The gradients are still computed.
  Returns (new state, metrics dict of scalars)."""
  if alpha_gradient is None:
    alpha_gradient = FirstOrder(loss_fn)
  rng, key_alpha, key_weight = jax.random.split(state.rng, 3)

  same_shapes = (jax.tree.map(jnp.shape, train_batch) == jax.tree.map(jnp.shape, val_batch))
  shareable = weight_step_alphas is None and same_shapes
  if shareable and isinstance(alpha_gradient, FirstOrder):
    alphas, alpha_opt_state, alpha_grads, (val_loss, val_logits), (
        train_loss, train_logits, batch_stats, weight_grads) = _first_order_passes(
            state, train_batch, val_batch, key_alpha, key_weight, loss_fn=loss_fn,
            alpha_loss_term=alpha_gradient.alpha_loss_term, alpha_tx=alpha_tx,
            update_alphas=update_alphas)
    extra = {}
  elif shareable and isinstance(alpha_gradient, Unrolled):
    alphas, alpha_opt_state, alpha_grads, (val_loss, val_logits), (
        train_loss, train_logits, batch_stats, weight_grads), extra = _unrolled_passes(
            state, train_batch, val_batch, key_alpha, key_weight, loss_fn=loss_fn,
            unrolled_grad=alpha_gradient, alpha_tx=alpha_tx, update_alphas=update_alphas)
  else:
    # 1. Architecture step on the val batch; its BN running-stat updates are discarded.
    alpha_grads, val_loss, val_logits, extra = alpha_gradient(state, train_batch, val_batch,
                                                              key_alpha)
    alphas, alpha_opt_state = _alpha_step(alpha_tx, alpha_grads, state.alphas,
                                          state.alpha_opt_state, update_alphas)

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


def _alpha_step(alpha_tx, grads, alphas, opt_state, active=True):
  """The architecture optimizer's step -> (alphas, opt_state); where `active` (a bool,
  possibly traced) is False, both stay as they were (the architecture warm-up)."""
  updates, new_opt_state = alpha_tx.update(grads, opt_state, alphas)
  new = (optax.apply_updates(alphas, updates), new_opt_state)
  if active is True:
    return new
  return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, (alphas, opt_state))


def _adam_step(alpha_tx, grads, carry, active=True):
  alphas, opt_state = _alpha_step(alpha_tx, grads, carry['alphas'], carry['alpha_opt_state'],
                                  active)
  return {**carry, 'alphas': alphas, 'alpha_opt_state': opt_state, 'alpha_grads': grads}


def _first_order_passes(state: SearchState, train_batch, val_batch, key_alpha, key_weight, *,
                        loss_fn: LossFn, alpha_loss_term: Callable | None,
                        alpha_tx: optax.GradientTransformation, update_alphas=True):
  """A first-order step's two halves as two passes of one compiled gradient (dnas/passes.py):
  pass 0 differentiates L_val (+ `alpha_loss_term`) at (w, alpha) and takes the Adam step;
  pass 1 differentiates L_train at (w, alpha'). Same numbers as the halves run one by one.

  Returns (alphas', alpha_opt_state', alpha_grads, (val_loss, val_logits),
  (train_loss, train_logits, batch_stats', weight_grads))."""
  w = state.weights
  carry = {'alphas': state.alphas, 'alpha_opt_state': state.alpha_opt_state,
           'alpha_grads': state.alphas}
  carry, (loss, logits, _), (stats, weight_grads) = passes.run(
      loss_fn, carry, batches=[val_batch, train_batch], keys=[key_alpha, key_weight],
      step=state.step, batch_stats=state.batch_stats,
      prepare=[lambda c: (w, c['alphas'])] * 2,
      finish=[lambda c, out: _adam_step(alpha_tx, out[2][1], c, update_alphas),
              lambda c, out: c],
      weight_grads=[False, True], alpha_loss_term=alpha_loss_term, term_pass=0)
  return (carry['alphas'], carry['alpha_opt_state'], carry['alpha_grads'],
          (loss[0], logits[0]), (loss[1], logits[1], stats, weight_grads))


def _unrolled_passes(state: SearchState, train_batch, val_batch, key_alpha, key_weight, *,
                     loss_fn: LossFn, unrolled_grad: Unrolled,
                     alpha_tx: optax.GradientTransformation, update_alphas=True):
  """A second-order step as passes of one compiled gradient. Finite differences, five:
    0  grad_w L_train(w, alpha)                 -> the virtual step w'
    1  grad_(w', alpha) L_val(w', alpha)        -> v, the direct term (+ `alpha_loss_term`)
    2  grad_alpha L_train(w + eps v, alpha)
    3  grad_alpha L_train(w - eps v, alpha)     -> H v; the Adam step on alpha
    4  grad_w L_train(w, alpha')                -> the weight step
  exact, four: passes 2 and 3 become one forward-over-reverse pass (the loop body's other
  `lax.cond` branch), d/dt grad_alpha L_train(w + t v, alpha) at t = 0 -> H v; the Adam step.
  The numbers are those of `unrolled.alpha_gradient` followed by the weight step (same PRNG
  keys); returns what `_first_order_passes` returns plus the extra metrics."""
  u = unrolled_grad
  w = state.weights
  xi = u.xi(state) if callable(u.xi) else u.xi
  key_train, key_val = jax.random.split(key_alpha)
  buf = unrolled.momentum_buffer(state.weight_opt_state, w)
  zeros_w = jax.tree.map(jnp.zeros_like, w)
  exact = u.hvp == 'exact'
  carry = {'alphas': state.alphas, 'alpha_opt_state': state.alpha_opt_state,
           'alpha_grads': state.alphas, 'w_grad': zeros_w, 'v': zeros_w,
           'direct': state.alphas, 'hv_norm': optax.tree.norm(state.alphas)}
  if not exact:  # the +- eps passes' state
    carry.update(plus=state.alphas, eps=optax.tree.norm(zeros_w))
  shifted = lambda c, sign: jax.tree.map(lambda x, v: x + sign * c['eps'] * v, w, c['v'])

  def after_val(c, out):
    v, direct = out[2]
    c = {**c, 'v': v, 'direct': direct}
    return c if exact else {**c, 'eps': u.fd_radius / optax.tree.norm(v)}

  def alpha_step(c, hv):
    grads = jax.tree.map(lambda d, h: d - xi * h, c['direct'], hv)
    return _adam_step(alpha_tx, grads, {**c, 'hv_norm': optax.tree.norm(hv)}, update_alphas)

  at_w = lambda c: (w, c['alphas'])
  at_virtual = lambda c: (unrolled.virtual_step(w, c['w_grad'], buf, xi=xi, momentum=u.momentum,
                                                weight_decay=u.weight_decay), c['alphas'])
  after_train = lambda c, out: {**c, 'w_grad': out[2][0]}
  if exact:
    hvp = dict(hvp_pass=2, hvp_direction=lambda c: c['v'])
    prepare = [at_w, at_virtual, at_w, at_w]
    finish = [after_train, after_val, lambda c, out: alpha_step(c, out[2][1]),
              lambda c, out: c]
    batches = [train_batch, val_batch, train_batch, train_batch]
    keys = [key_train, key_val, key_train, key_weight]
    weight_grads = [True, True, False, True]
  else:
    hvp = {}
    prepare = [at_w, at_virtual, lambda c: (shifted(c, 1.0), c['alphas']),
               lambda c: (shifted(c, -1.0), c['alphas']), at_w]
    finish = [after_train, after_val, lambda c, out: {**c, 'plus': out[2][1]},
              lambda c, out: alpha_step(c, jax.tree.map(
                  lambda p, m: (p - m) / (2 * c['eps']), c['plus'], out[2][1])),
              lambda c, out: c]
    batches = [train_batch, val_batch, train_batch, train_batch, train_batch]
    keys = [key_train, key_val, key_train, key_train, key_weight]
    weight_grads = [True, True, False, False, True]
  carry, (loss, logits, _), (stats, weight_grads) = passes.run(
      loss_fn, carry, batches=batches, keys=keys, step=state.step,
      batch_stats=state.batch_stats, prepare=prepare, finish=finish,
      weight_grads=weight_grads, alpha_loss_term=u.alpha_loss_term, term_pass=1, **hvp)
  extra = {'hvp_norm': carry['hv_norm'], 'unrolled_grad_norm': optax.tree.norm(carry['v'])}
  return (carry['alphas'], carry['alpha_opt_state'], carry['alpha_grads'],
          (loss[1], logits[1]), (loss[-1], logits[-1], stats, weight_grads), extra)


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
    return loss, (logits, nnx.state(model, nnx.BatchStat))
  return with_alpha_term(loss_fn, extra_loss)
