"""Several gradient passes of a bilevel step as iterations of one compiled gradient.

Every pass of a DARTS step -- the architecture and weight halves of first order, the five
passes of the unrolled finite-difference gradient -- differentiates the same network loss,
only at other (weights, alphas, batch, key). XLA compiles each call site separately, so a
step written pass by pass compiles the network's forward and backward graph once per pass
(compile time and live activations grow with the pass count). Here the passes are the
iterations of one `lax.scan`: pass i reads its inputs from the carry (`prepare[i]`), runs the
shared `value_and_grad`, and folds its outputs into the carry (`finish[i]`); the branches are
cheap elementwise updates of parameter trees chosen with `lax.switch`.

Passes that need no weight gradient skip the conv kernels' part of it at run time
(dnas/kernel_grads.py), so sharing costs little extra work. The convs must use loop-safe
gradient rules (cells/ops.py `canonical_conv`). One pass may instead be a mixed
Hessian-vector product (forward over reverse, the exact second-order HVP): a `lax.cond`
branch of the loop body, traced with forward-mode-capable rules (`canonical_jvp_conv`).
"""
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from dnas import kernel_grads


def run(loss_fn: Callable, carry, *, batches: Sequence, keys: Sequence, step,
        batch_stats, prepare: Sequence[Callable], finish: Sequence[Callable],
        weight_grads: Sequence[bool], alpha_loss_term: Callable | None = None,
        term_pass: int | None = None, hvp_pass: int | None = None,
        hvp_direction: Callable | None = None):
  """Runs len(prepare) passes; returns (final carry, per-pass (loss, logits, alpha_grads)
  stacked on axis 0, (batch_stats, weight_grads) of the last pass).

  prepare[i](carry) -> (weights, alphas); finish[i](carry, out) -> carry, where
  out = (loss, (logits, batch_stats), (weight_grads, alpha_grads)). `weight_grads[i]` says
  whether pass i needs the weight gradient (else the conv kernels' part is zeros);
  `alpha_loss_term(alphas, step)` joins the loss of pass `term_pass` only. Every pass runs in
  train mode from `batch_stats`; each pass's batch-stat update is handed to its `finish`, none
  applied.

  Pass `hvp_pass` (if given) returns, in place of the alpha gradient, the mixed
  Hessian-vector product d/dt grad_alpha L(w + t v, alpha) at t = 0 with
  v = `hvp_direction(carry)`, and zeros as its weight gradient.

  Only the last pass's weight gradients and batch statistics leave the loop (both steps end
  with the weight pass), in the loop's carry: stacking them for every pass cost a
  dynamic-update-slice in the loop and a slice after it per parameter and statistic leaf
  (~750 of each on the DARTS supernet), which XLA compiled as ~200 kernels of their own."""
  n = len(prepare)
  if not len(batches) == len(keys) == len(finish) == len(weight_grads) == n:
    raise ValueError('prepare, finish, batches, keys and weight_grads need one entry per pass')
  stacked = jax.tree.map(lambda *b: jnp.stack(b), *batches)
  keys = jnp.stack(keys)
  needs_weight_grads = jnp.array(weight_grads)

  def pass_loss(weights, alphas, batch, key, i):
    loss, aux = loss_fn(weights, alphas, batch_stats, batch, key, step)
    if alpha_loss_term is not None:  # a function of the alphas only
      loss = loss + jnp.where(i == term_pass, alpha_loss_term(alphas, step), 0.0)
    return loss, aux

  grad_fn = jax.value_and_grad(pass_loss, argnums=(0, 1), has_aux=True)

  def gradient(weights, alphas, batch, key, i):
    with kernel_grads.only_if(needs_weight_grads[i]):
      (loss, aux), grads = grad_fn(weights, alphas, batch, key, i)
    return loss, aux, grads

  def mixed_hvp(weights, alphas, batch, key, i, direction):
    # The inner gradient is taken w.r.t. the weights too (and that part dropped: XLA removes
    # it), so reverse mode reaches every conv and transposes its tangent rule
    # (`canonical_jvp_conv`'s docstring says why that matters).
    def alpha_grad_at(w):
      (loss, aux), (_, a_grads) = grad_fn(w, alphas, batch, key, i)
      return a_grads, (loss, aux)
    with kernel_grads.forward_mode():
      _, hv, (loss, aux) = jax.jvp(alpha_grad_at, (weights,), (direction,), has_aux=True)
    return loss, aux, (jax.tree.map(jnp.zeros_like, weights), hv)

  def one_pass(loop_carry, i):
    carry, _ = loop_carry
    weights, alphas = jax.lax.switch(i, prepare, carry)
    batch = jax.tree.map(lambda b: b[i], stacked)
    args = weights, alphas, batch, keys[i], i
    if hvp_pass is None:
      loss, (logits, stats), (w_grads, a_grads) = gradient(*args)
    else:
      loss, (logits, stats), (w_grads, a_grads) = jax.lax.cond(
          i == hvp_pass, lambda: mixed_hvp(*args, hvp_direction(carry)),
          lambda: gradient(*args))
    out = loss, (logits, stats), (w_grads, a_grads)
    carry = jax.lax.switch(i, finish, carry, out)
    return (carry, (stats, w_grads)), (loss, logits, a_grads)

  weights, _ = prepare[-1](carry)  # the shapes of a pass's weight gradients
  last = (batch_stats, jax.tree.map(jnp.zeros_like, weights))
  (carry, last), per_pass = jax.lax.scan(one_pass, (carry, last), jnp.arange(n))
  return carry, per_pass, last
