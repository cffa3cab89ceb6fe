"""Default NAS-Bench-201 retraining: the default NB201 search's arch, trained on mnist5k.

    dnas-search --config=configs/nb201_default.py --workdir=/tmp/dnas_nb201   # writes the arch
    dnas-retrain --config=configs/retrain_nb201_default.py --workdir=/tmp/dnas_nb201_retrain

NAS-Bench-201's training recipe (configs/retrain_nb201_cifar10.py) shrunk to minutes on CPU:
the stand-alone network (cells/nb201.py `Network`) at C=8, N=1, batch 64, 4 epochs of the
4,000 train+val digits (248 steps), tested on the 1,000 held-out test digits. SGD with
Nesterov momentum 0.9, lr 0.1 cosine per epoch to 0, weight decay 5e-4, no clipping, no
auxiliary head, drop-path or Cutout (NB201 has none). Measured on the default NB201 search's
arch (55,218 parameters): 97.4 % test accuracy, 1.4 min on the 2-core dev machine under a
load of 6-9 from other jobs (first step with compile 7.2 s, no compilation cache).
Any NB201 arch works: --config.genotype='|nor_conv_3x3~0|+|...|' or a genotype.json path.
"""
from dnas.configs import retrain_default


def get_config():
  c = retrain_default.get_config()   # data, logging, checkpoint and device fields
  c.genotype = '/tmp/dnas_nb201/genotype.json'  # arch string or an nb201 genotype.json

  m = c.model
  for darts_only in ('layers', 'auxiliary', 'conv_form'):
    del m[darts_only]
  m.network = 'nb201'           # cells/standalone.py: cifar | imagenet (DARTS) | nb201
  m.channels = 8                # C: stages of C, 2C, 4C channels
  m.cells_per_stage = 1         # N

  c.aux_weight = 0.0
  c.drop_path_prob = 0.0
  c.cutout_length = 0

  c.batch_size = 64
  c.epochs = 4
  c.steps_per_epoch = 0         # 0: one pass over the train split

  c.optim.lr = 0.1
  c.optim.lr_min = 0.0
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.weight_decay = 5e-4
  c.optim.grad_clip = 0.0       # 0: no clipping (NB201 clips nothing)

  c.eval_every_epochs = 2
  return c
