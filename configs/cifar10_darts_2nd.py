"""The DARTS paper's second-order CIFAR-10 search (Liu et al., 2019, "DARTS (second order)").

    dnas-search --config=configs/cifar10_darts_2nd.py --workdir=gs://bucket/darts_c10_2nd \
        --config.data_dir=DIR_WITH_CIFAR10

The first-order recipe (configs/cifar10_darts.py) with the unrolled architecture gradient:
xi = the weight learning rate, the Hessian-vector product by the paper's finite difference
(eps = 0.01 / ||v||). `--config.bilevel.hvp=exact` swaps in the exact forward-over-reverse
product (no approximation error).
"""
from dnas.configs import cifar10_darts


def get_config():
  c = cifar10_darts.get_config()
  c.bilevel.order = 2
  c.bilevel.hvp = 'finite_difference'
  return c
