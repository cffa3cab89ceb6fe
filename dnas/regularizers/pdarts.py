"""P-DARTS (Chen et al., ICCV 2019): scheduled dropout on skip connections, and a cap on
the skips of the derived normal cell.

Dropout: every identity skip-connect output (stride 1; the stride-2 FactorizedReduce skip is
not an identity and keeps no dropout, as the reference's `isinstance(op, Identity)`) is
dropped elementwise with rate p and rescaled by 1/(1-p), in the weight and architecture
passes (train mode), per edge. p(epoch) = dropout_rate * exp(-decay * epoch): the
reference's schedule after its warm-up epochs (`drop_rate[sp] * exp(-(epoch - eps_no_arch) *
scale_factor)`, scale_factor 0.2). The search here has no stages and no arch-free warm-up,
so the schedule starts at epoch 0; the default rate 0.1 is the reference's CIFAR-10 first
stage, the one with the full operation set (README: `--dropout_rate 0.1 0.4 0.7`).

Cap (`max_skips`, 2; None: no cap): while the derived normal cell has more skips than
allowed, the skip connection with the smallest weight on any edge that still offers one is
removed from that edge and the cell is derived again (`delete_min_sk_prob` + re-parse in
chenxin061/pdarts train_search.py; the other weights are left as they are). Normal cell
only, as the reference.
"""
import numpy as np

from dnas.regularizers import SKIP_DROPOUT, Regularizer, register

SKIP = 'skip_connect'


@register('pdarts')
class PDARTS(Regularizer):
  edge_kinds = (SKIP_DROPOUT,)
  dropout_rate: float = 0.1
  decay: float = 0.2
  max_skips: int | None = 2
  steps_per_epoch: int | None = None

  def __post_init__(self):
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'regularizer_args.pdarts.dropout_rate must be in [0, 1), got '
                       f'{self.dropout_rate}')
    if self.max_skips is not None and self.max_skips < 0:
      raise ValueError(f'regularizer_args.pdarts.max_skips must be >= 0 or None, got '
                       f'{self.max_skips}')

  def rate(self, step):
    import jax.numpy as jnp
    return self.dropout_rate * jnp.exp(-self.decay * self.epoch(step))

  def edge_coefficients(self, step):
    return {SKIP_DROPOUT: self.rate(step)} if self.dropout_rate > 0 else {}

  def scalars(self, step):
    return {'skip_dropout': self.rate(step)}

  def postprocess(self, genotype, weights, ops, derive):
    return cap_skips(genotype, weights, ops, derive, self.max_skips)


def cap_skips(genotype, weights, ops, derive, max_skips):
  """P-DARTS' rule: remove the weakest remaining skip until the normal cell has at most
  `max_skips` of them. `derive(normal, reduce)` -> genotype."""
  if max_skips is None or SKIP not in ops:
    return genotype
  normal, reduce = (np.array(w, dtype=np.float64, copy=True) for w in weights)
  k = list(ops).index(SKIP)
  removed = np.zeros(normal.shape[0], bool)
  count = lambda g: sum(op == SKIP for op, _ in g.normal)
  while count(genotype) > max_skips:
    candidates = np.where(~removed)[0]
    edge = candidates[np.argmin(normal[candidates, k])]
    removed[edge] = True
    normal[edge, k] = -np.inf  # never chosen again; other ops on the edge keep their weights
    genotype = derive(normal, reduce)
  return genotype
