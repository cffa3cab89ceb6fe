"""NAS-Bench-201's training recipe for CIFAR-10 (Dong & Yang, ICLR 2020, Table 1).

    dnas-retrain --config=configs/retrain_nb201_cifar10.py --workdir=/tmp/nb201_c10 \
        --config.data_dir=DIR_WITH_CIFAR10   # [--config.genotype='|...|' or a genotype.json]

Values from D-X-Y/AutoDL-Projects `configs/nas-benchmark/hyper-opts/200E.config` (the file
the benchmark was trained with): 200 epochs, SGD momentum 0.9 with Nesterov, lr 0.1, cosine
to 0 stepped per epoch (its `CosineAnnealingLR` with warmup 0), weight decay 5e-4 on every
parameter (torch SGD's L2), batch 256, plain cross-entropy, no gradient clipping; network
C=16, N=5 (`TinyNetwork`); random crop (4-pixel pad) + horizontal flip, no Cutout, no
auxiliary head, no drop-path. The benchmark's `cifar10` entries train on all 50,000 training
images and test on the 10,000 test images (its `cifar10-valid` trains on 25,000 and
validates on the other 25,000): here train+val -> test.

Differences: mean/std normalisation uses the DARTS CIFAR values of trainers/data.py
(NB201: mean (125.3, 123.0, 113.9)/255, std (63.0, 62.1, 66.7)/255); NB201 ran 3 seeds
(777, 888, 999), one seed here per run (--config.seed).
"""
from dnas.configs import retrain_nb201_default


def get_config():
  c = retrain_nb201_default.get_config()
  c.dataset = 'cifar10'
  c.train_split = 'train+val'   # all 50,000 training images (NB201's `cifar10` setting)
  c.genotype = ('|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|'
                '+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|')  # AutoDL-Projects#103: the best
  c.model.channels = 16
  c.model.cells_per_stage = 5
  c.batch_size = 256
  c.epochs = 200
  c.optim.lr = 0.1
  c.optim.lr_min = 0.0
  c.optim.nesterov = True
  c.optim.weight_decay = 5e-4
  c.optim.grad_clip = 0.0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 2000
  c.eval_every_epochs = 10
  return c
