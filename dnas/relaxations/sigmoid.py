"""FairDARTS (Chu et al., 2020): independent sigmoid op weights.

weights = sigmoid(alphas): each op's weight lies in (0, 1) on its own, with no softmax
making the ops compete (the paper's cure for skip connections crowding out the rest). The
genotype is read off the sigmoid weights with DARTS' rule (top-2 edges per node, strongest
non-`none` op); FairDARTS' alternative 0.85 threshold is not implemented. Its zero-one loss
is a regularizer (a separate issue), not part of the relaxation.
"""
import jax

from dnas.relaxations import Relaxation, register


@register('sigmoid')
class Sigmoid(Relaxation):

  def weights(self, alphas, *, key, step):
    del key, step  # deterministic, unscheduled
    return jax.nn.sigmoid(alphas)
