"""DARTS+ (Liang et al., 2019): early stopping before the collapse.

Criterion 1: stop when the derived normal cell has `max_skips` (2) or more skip connections.
Criterion 2: stop when the ranking of the architecture parameters of the learnable
operations (the conv ops; per edge, both cell types) has not changed for `stable_epochs`
(10) epochs; it needs two or more learnable ops (with one, nothing can change rank). Both
from the paper (sec. 3.2); set either to 0 to switch it off. The genotype is the one at the
stopping epoch.
"""
import numpy as np

from dnas.regularizers import Regularizer, Stop, register


def learnable(ops):
  return [j for j, op in enumerate(ops) if 'conv' in op]


def ranking(record, ops):
  cols = learnable(ops)
  return tuple(tuple(np.argsort(-np.asarray(record[cell])[:, cols], axis=1, kind='stable')
                     .ravel().tolist()) for cell in ('normal', 'reduce'))


@register('darts_plus')
class DARTSPlus(Regularizer):
  max_skips: int = 2
  stable_epochs: int = 10

  def should_stop(self, history, ops):
    if not history:
      return None
    last = history[-1]
    # The key the search writes (trainers/search.py normal_cell_counts).
    if self.max_skips and last.get('normal_cell_skips', 0) >= self.max_skips:
      return Stop('darts_plus', f'the normal cell has {last["normal_cell_skips"]} skip '
                  f'connections (criterion 1: >= {self.max_skips})')
    n = self.stable_epochs
    # One learnable op has no ranking to change: criterion 2 would fire after n epochs
    # whatever the search did (e.g. R-DARTS' S2/S3 spaces, sep_conv_3x3 the only conv).
    if n and len(history) > n and len(learnable(ops)) > 1:
      ranks = [ranking(r, ops) for r in history[-(n + 1):]]
      if all(r == ranks[0] for r in ranks):
        return Stop('darts_plus', f'the ranking of the learnable ops\' alphas has not changed '
                    f'for {n} epochs (criterion 2)')
    return None
