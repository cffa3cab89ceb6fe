"""DARTS- (Chu et al., ICLR 2021): an auxiliary skip connection on every edge, fading out.

Every edge's output becomes  mixed_op(x) + beta * skip(x),  x the edge's source state and
skip the identity (stride 1) or, on the stride-2 edges of a reduction cell, a
FactorizedReduce of its own (as the reference's `auxiliary_op`). beta falls linearly per
epoch from `beta_start` (1) to 0: beta(epoch) = beta_start * (1 - epoch / epochs), the
reference's `--auxiliary_skip --skip_beta 1.0 --decay linear` with decay over all epochs
(Meituan-AutoML/DARTS-, src/search/args.py and model_search.py `MixedOp`). The term is part
of the supernet's forward pass in both halves of the step and in supernet evaluation.
"""
from dnas.regularizers import AUX_SKIP, Regularizer, register


@register('darts_minus')
class DARTSMinus(Regularizer):
  edge_kinds = (AUX_SKIP,)
  beta_start: float = 1.0
  total_steps: int | None = None
  steps_per_epoch: int | None = None

  def beta(self, step):
    return self.beta_start * (1.0 - self.epoch(step) / self.epochs())

  def edge_coefficients(self, step):
    return {AUX_SKIP: self.beta(step)}

  def scalars(self, step):
    return {'beta': self.beta(step)}
