"""R-DARTS (Zela et al., ICLR 2020): the dominant eigenvalue of the Hessian of the val loss
w.r.t. the alphas, as a monitor and as an early-stopping rule (DARTS-ES).

Eigenvalue: power iteration on exact Hessian-vector products, H v = jvp of grad_alpha L_val
(forward over reverse; no finite differences), at the end of every epoch on one fixed val
batch (the search's first). Power iteration converges to the eigenvalue of largest
magnitude; if that one is negative, a second iteration on H - lambda I finds the largest
algebraic one, which is what the paper tracks (`max(LA.eigvals(H))` in the reference code).

Early stopping (the paper's DARTS-ES, sec. 4.3): with lambda-bar(i) the mean of the
eigenvalues over a window of `window` (5) epochs centred on epoch i, stop at the first epoch
where  lambda-bar(i - k) / lambda-bar(i) < threshold  (k 5, T 0.75), and return the
architecture of epoch i - k. Stopping is considered only once that earlier epoch is at least
`start_epoch` (10, the reference code's `--es_start_epoch`). The local average is centred as
the reference's `EVLocalAvg` (it is known `window // 2` epochs after its centre).
`early_stop=False` keeps the monitor and never stops.
"""
import math
from typing import Callable

import numpy as np

from dnas.regularizers import Regularizer, Stop, register


@register('rdarts')
class RDARTS(Regularizer):
  needs_eigenvalue = True
  early_stop: bool = True
  window: int = 5
  k: int = 5
  threshold: float = 0.75
  start_epoch: int = 10
  iters: int = 20            # power-iteration steps at most (each one Hessian-vector product)
  tol: float = 1e-3          # relative change of the estimate that counts as converged

  def __post_init__(self):
    if self.window < 1 or self.k < 1 or self.iters < 1:
      raise ValueError('regularizer_args.rdarts: window, k and iters must be >= 1')

  def should_stop(self, history, ops):
    del ops
    if not self.early_stop:
      return None
    ev = [r.get('eigenvalue') for r in history]
    if any(e is None for e in ev):
      return None
    return eigenvalue_rule(ev, [r['epoch'] for r in history], window=self.window, k=self.k,
                           threshold=self.threshold, start_epoch=self.start_epoch)


def eigenvalue_rule(eigenvalues, epochs, *, window, k, threshold, start_epoch):
  """DARTS-ES on per-epoch eigenvalues (epochs[i] = the epoch number of eigenvalues[i])."""
  n = len(eigenvalues)
  if n < window + k:
    return None
  local = lambda end: float(np.mean(eigenvalues[end - window:end]))  # window ending at end-1
  now, before = local(n), local(n - k)
  centre_before = n - k - 1 - window // 2  # index of the earlier window's centre
  if epochs[centre_before] < start_epoch or now <= 0:
    return None
  ratio = before / now
  if ratio < threshold:
    return Stop('rdarts', f'dominant Hessian eigenvalue rose: local average {before:.4g} at '
                f'epoch {epochs[centre_before]:g} -> {now:.4g} at epoch '
                f'{epochs[n - 1 - window // 2]:g} (ratio {ratio:.3f} < {threshold})',
                genotype_epoch=int(round(epochs[centre_before])))
  return None


def power_iteration(hvp: Callable, v0, *, iters: int, tol: float):
  """(eigenvalue of largest magnitude, its unit vector, iterations used) of the symmetric
  operator `hvp` (flat vector -> flat vector), from start vector v0 (numpy or jax)."""
  v = np.asarray(v0, np.float64)
  v = v / np.linalg.norm(v)
  eig = None
  for i in range(1, iters + 1):
    hv = np.asarray(hvp(v), np.float64)
    new = float(v @ hv)  # Rayleigh quotient
    norm = np.linalg.norm(hv)
    if norm == 0:
      return 0.0, v, i
    v = hv / norm
    if eig is not None and abs(new - eig) <= tol * max(abs(new), 1e-12):
      return new, v, i
    eig = new
  return eig, v, iters


def largest_eigenvalue(hvp: Callable, v0, *, iters: int, tol: float) -> float:
  """The largest (algebraic) eigenvalue: power iteration, shifted once if the dominant one is
  negative."""
  lam, _, _ = power_iteration(hvp, v0, iters=iters, tol=tol)
  if lam >= 0 or not math.isfinite(lam):
    return lam
  mu, _, _ = power_iteration(lambda v: np.asarray(hvp(v)) - lam * v, v0, iters=iters, tol=tol)
  return mu + lam


def make_hvp(loss_of_alphas: Callable):
  """v -> H v for H the Hessian of loss_of_alphas (flat alphas -> scalar) at `flat`:
  forward-over-reverse, exact. Returns hvp(flat, v)."""
  import jax
  return lambda flat, v: jax.jvp(jax.grad(loss_of_alphas), (flat,), (v,))[1]
