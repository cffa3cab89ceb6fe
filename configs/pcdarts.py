"""PC-DARTS' CIFAR-10 search (Xu et al., ICLR 2020, sec. 4.2 and yuhuixu1993/PC-DARTS
train_search.py), first order, partial channels K=4 with edge normalisation.

    dnas-search --config=configs/pcdarts.py --workdir=gs://bucket/pcdarts_c10 \
        --config.data_dir=DIR_WITH_CIFAR10
    dnas-search --config=configs/pcdarts.py:mnist5k --workdir=/tmp/dnas_pcdarts   # offline

8 cells, C=16, batch 256, 50 epochs; SGD 0.1 -> 0.001 cosine (the code's learning_rate_min;
the paper says "annealed down to zero"), momentum 0.9, wd 3e-4, clip 5; Adam 6e-4
(0.5, 0.999), wd 1e-3 for the alphas and the betas. The training set is cut into two halves.

Warm-up as the paper's code: the first 15 epochs train only the weights
(`if epoch >= 15: architect.step(...)`), `optim.arch_warmup_epochs = 15`.

`:mnist5k` is the same recipe shrunk to run offline on a CPU (mnist5k, 4 cells, C=8, so
the ops see 2 channels in normal cells and 4 in reduction cells; batch 64, 3 epochs, no
warm-up).
"""
from dnas.configs import default


def get_config(arg: str | None = None):
  c = default.get_config()
  c.model.partial_channels = 4
  c.model.edge_normalization = True
  c.optim.lr = 0.1
  c.optim.lr_min = 0.001
  c.optim.arch_lr = 6e-4
  if arg == 'mnist5k':
    c.model.channels = 8
    c.model.layers = 4
    c.batch_size = 64
    c.epochs = 3
    return c
  if arg:
    raise ValueError(f'configs/pcdarts.py takes no argument or "mnist5k", got {arg!r}')
  c.optim.arch_warmup_epochs = 15
  c.dataset = 'cifar10'
  c.model.channels = 16
  c.model.layers = 8
  c.batch_size = 256
  c.epochs = 50
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  return c
