"""The DARTS paper's CIFAR-10 evaluation (Liu et al., 2019, sec. 3.2; quark0/darts train.py).

    dnas-retrain --config=configs/retrain_cifar10_darts.py --workdir=/tmp/darts_c10_eval \
        --config.genotype=DARTS_V2 --config.data_dir=DIR_WITH_CIFAR10

20 cells, C=36 (3.3 M parameters for DARTS_V2), batch 96, 600 epochs on the full 50,000-image
training set, tested on the 10,000 test images; SGD 0.025 -> 0 cosine (per epoch), momentum
0.9, weight decay 3e-4, gradient clip 5; auxiliary head (weight 0.4), drop-path 0 -> 0.2,
Cutout 16, random crop + flip. CIFAR-10 must be prepared as array_record (see README).
"""
from dnas.configs import retrain_default


def get_config():
  c = retrain_default.get_config()
  c.dataset = 'cifar10'
  c.train_split = 'train+val'   # cifar10's two search halves: the whole training set
  c.genotype = 'DARTS_V2'
  c.model.channels = 36
  c.model.layers = 20
  c.aux_weight = 0.4
  c.drop_path_prob = 0.2
  c.cutout_length = 16
  c.batch_size = 96
  c.epochs = 600
  c.optim.lr = 0.025
  c.optim.lr_min = 0.0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 2000
  c.eval_every_epochs = 10
  c.keep_checkpoints = 2
  return c
