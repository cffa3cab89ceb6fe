"""Second-order ("unrolled") DARTS: the architecture gradient through one virtual weight step.

DARTS (Liu et al., 2019, eq. 6-8) differentiates the val loss after one virtual SGD step,

    w' = w - xi * (momentum * buf + grad_w L_train(w, alpha) + weight_decay * w),

exactly as the reference's `_compute_unrolled_model` builds it (the raw loss gradient: no
clipping; `buf` is the weight optimizer's momentum buffer). Only grad_w L_train depends on
alpha, so the chain rule gives

    d L_val(w'(alpha), alpha) / d alpha = grad_alpha L_val(w', alpha) - xi * H v,
    H v = grad_alpha < grad_w L_train(w, alpha), v >,     v = grad_w' L_val(w', alpha).

H v, a mixed second derivative of the train loss, is computed one of two ways:

  exact              forward-over-reverse: `jax.jvp` of w -> grad_alpha L_train(w, alpha) in
                     the direction v. No approximation error; about the cost of two gradients.
  finite_difference  the paper's central difference (eq. 8):
                     (grad_alpha L_train(w + eps v) - grad_alpha L_train(w - eps v)) / (2 eps),
                     eps = 0.01 / ||v||. Two gradients; truncation error O(eps^2).

Every pass normalises with its own batch's statistics (train mode) and discards its running-
stat update: only the real weight step updates the BN averages (see dnas/bilevel.py). The
train-loss passes share one PRNG key, so a stochastic relaxation sees one function L_train.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import optax

HVP_MODES = ('finite_difference', 'exact')
FD_RADIUS = 0.01  # the paper's r in eps = r / ||v||


def check_hvp(mode: str) -> str:
  if mode not in HVP_MODES:
    raise ValueError(f'unknown bilevel.hvp {mode!r}; valid: {", ".join(HVP_MODES)}')
  return mode


def virtual_step(weights, grads, momentum_buffer, *, xi, momentum: float, weight_decay: float):
  """w' = w - xi * (momentum * buf + g + weight_decay * w): the reference's unrolled model."""
  return jax.tree.map(lambda w, g, b: w - xi * (momentum * b + g + weight_decay * w),
                      weights, grads, momentum_buffer)


def momentum_buffer(weight_opt_state, weights):
  """The heavy-ball buffer of the weight optimizer (optax's `trace`); zeros if it has none."""
  trace = optax.tree.get(weight_opt_state, 'trace')
  return jax.tree.map(jnp.zeros_like, weights) if trace is None else trace


def mixed_hvp_exact(alpha_grad_at: Callable, weights, vector):
  """H v = d/dt grad_alpha L(w + t v) at t = 0, by forward-mode over reverse-mode."""
  return jax.jvp(alpha_grad_at, (weights,), (vector,))[1]


def mixed_hvp_finite_difference(alpha_grad_at: Callable, weights, vector,
                                radius: float = FD_RADIUS):
  """The paper's central difference with eps = radius / ||v||."""
  eps = radius / optax.tree.norm(vector)
  plus = alpha_grad_at(jax.tree.map(lambda w, v: w + eps * v, weights, vector))
  minus = alpha_grad_at(jax.tree.map(lambda w, v: w - eps * v, weights, vector))
  return jax.tree.map(lambda p, m: (p - m) / (2 * eps), plus, minus)


def alpha_gradient(state, train_batch, val_batch, key, *, loss_fn, xi, momentum: float,
                   weight_decay: float, hvp: str = 'finite_difference',
                   fd_radius: float = FD_RADIUS):
  """The unrolled architecture gradient at `state` (a dnas.state.SearchState).

  `xi` is the virtual step size: a float, or a function of the search state (e.g. reading the
  weight optimizer's current learning rate, the paper's choice). Returns (grads, val_loss,
  val_logits, extra metrics).
  """
  check_hvp(hvp)
  key_train, key_val = jax.random.split(key)
  w, alphas, stats, step = state.weights, state.alphas, state.batch_stats, state.step
  xi = xi(state) if callable(xi) else xi

  def train_loss(weights, alphas):
    return loss_fn(weights, alphas, stats, train_batch, key_train, step)[0]

  # The virtual step w -> w'.
  train_grads = jax.grad(train_loss)(w, alphas)
  w_virtual = virtual_step(w, train_grads, momentum_buffer(state.weight_opt_state, w), xi=xi,
                           momentum=momentum, weight_decay=weight_decay)
  # The val loss at w', differentiated w.r.t. alpha (the direct term) and w' (the vector v).
  (val_loss, (val_logits, _)), (v, direct) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(w_virtual, alphas, stats, val_batch, key_val, step)

  alpha_grad_at = lambda weights: jax.grad(train_loss, argnums=1)(weights, alphas)
  if hvp == 'exact':
    hv = mixed_hvp_exact(alpha_grad_at, w, v)
  else:
    hv = mixed_hvp_finite_difference(alpha_grad_at, w, v, fd_radius)
  grads = jax.tree.map(lambda d, h: d - xi * h, direct, hv)
  extra = {'hvp_norm': optax.tree.norm(hv), 'unrolled_grad_norm': optax.tree.norm(v)}
  return grads, val_loss, val_logits, extra

