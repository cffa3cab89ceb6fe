"""The DARTS paper's CIFAR-10 search (Liu et al., 2019, sec. 3.1), first order.

    dnas-search --config=configs/cifar10_darts.py --workdir=gs://bucket/darts_c10 \
        --config.data_dir=DIR_WITH_CIFAR10

8 cells, C=16, batch 64, 50 epochs; SGD 0.025 -> 0.001 cosine, momentum 0.9, wd 3e-4,
clip 5; Adam 3e-4 (0.5, 0.999), wd 1e-3 for the alphas. The training set is cut into two
halves of 25,000 (weights / alphas). CIFAR-10 must be prepared as array_record (see README).
"""
from dnas.configs import default


def get_config():
  c = default.get_config()
  c.dataset = 'cifar10'
  c.model.channels = 16
  c.model.layers = 8
  c.batch_size = 64
  c.epochs = 50
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  return c
