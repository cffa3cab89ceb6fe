"""Which passes of a shared compiled gradient need the conv kernels' gradients, and which
pass differentiates in forward mode over reverse mode.

A first-order DARTS step runs one compiled gradient twice (dnas/bilevel.py): the architecture
pass needs only the alpha gradient, the weight pass the weight gradient. Convs (cells/ops.py
`canonical_conv`) traced inside `only_if(flag)` compute their kernel gradient under a
`lax.cond` on the traced bool `flag`, so the architecture pass skips that work at run time
while both passes share one graph. `canonical_conv` and the shared passes' BN are reverse-mode
rules (`custom_vjp`); the exact second-order HVP (`jax.jvp` of a gradient) is traced inside
`forward_mode()`, where convs take `canonical_jvp_conv` (a forward-mode rule whose transposes
are canonical convs too) and search BNs a JVP that keeps only their output. Outside both,
convs keep JAX's own rules.
Trace-time settings, like `jax.named_scope`: they hold no run-time state.
"""
import contextlib
import contextvars

import jax

_FLAG = contextvars.ContextVar('kernel_grads', default=None)
_FORWARD = contextvars.ContextVar('kernel_grads_forward_mode', default=False)


@contextlib.contextmanager
def only_if(flag: jax.Array):
  token = _FLAG.set(flag)
  try:
    yield
  finally:
    _FLAG.reset(token)


@contextlib.contextmanager
def forward_mode():
  """Convs and BNs traced here must also be differentiable in forward mode (over reverse)."""
  token, flag_token = _FORWARD.set(True), _FLAG.set(None)
  try:
    yield
  finally:
    _FLAG.reset(flag_token)
    _FORWARD.reset(token)


def flag():
  """The traced flag inside `only_if`, else None (no shared reverse-mode pass)."""
  return _FLAG.get()


def in_forward_mode() -> bool:
  return _FORWARD.get()
