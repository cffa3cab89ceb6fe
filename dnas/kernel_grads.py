"""Which passes of a shared compiled gradient need the conv kernels' gradients.

A first-order DARTS step runs one compiled gradient twice (dnas/bilevel.py): the architecture
pass needs only the alpha gradient, the weight pass the weight gradient. Convs (cells/ops.py
`canonical_conv`) traced inside `only_if(flag)` compute their kernel gradient under a
`lax.cond` on the traced bool `flag`, so the architecture pass skips that work at run time
while both passes share one graph. Outside `only_if`, convs keep JAX's own rules
(`canonical_conv` has no forward-mode rule, which the exact second-order HVP needs).
A trace-time setting, like `jax.named_scope`: it holds no run-time state.
"""
import contextlib
import contextvars

import jax

_FLAG = contextvars.ContextVar('kernel_grads', default=None)


@contextlib.contextmanager
def only_if(flag: jax.Array):
  token = _FLAG.set(flag)
  try:
    yield
  finally:
    _FLAG.reset(token)


def flag():
  """The traced flag inside `only_if`, else None (no shared pass: plain JAX convs)."""
  return _FLAG.get()
