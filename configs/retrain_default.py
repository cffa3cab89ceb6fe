"""Default retraining: the default search's genotype, trained from scratch on mnist5k.

    dnas-search --config=configs/default.py --workdir=/tmp/dnas_default    # writes the genotype
    dnas-retrain --config=configs/retrain_default.py --workdir=/tmp/dnas_retrain

Trains on train+val (4,000 digits), tests on the held-out test split (1,000). Same recipe as
the paper's CIFAR-10 evaluation (configs/retrain_cifar10_darts.py), shrunk to fit minutes on
CPU: 5 cells of C=8 (48 k parameters), batch 64, 6 epochs (372 steps). Measured on the 2-core
dev machine while another job kept one core busy: 98.0 % test accuracy, 4.2 min wall in all
(the first step, compile included, 18 s).
Any genotype works: --config.genotype=DARTS_V2 (known names) or a path to a genotype.json.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = 'mnist5k'         # trainers/data.py DATASETS: mnist5k | cifar10
  c.data_dir = '~/tensorflow_datasets'
  c.train_split = 'train+val'   # the search's two halves together
  c.test_split = 'test'
  c.genotype = '/tmp/dnas_default/genotype.json'  # a known name (DARTS_V2, ...) or a path

  c.model = ml_collections.ConfigDict()
  c.model.network = 'cifar'     # the DARTS CIFAR evaluation network (cells/eval_network.py)
  c.model.channels = 8
  c.model.layers = 5
  c.model.auxiliary = True
  c.model.conv_form = 'auto'    # auto | folded | shift | grouped (cells/ops.py)

  c.aux_weight = 0.4
  c.drop_path_prob = 0.2        # reached linearly over the epochs
  c.cutout_length = 0           # 16 on CIFAR-10; digits are centred: no cutout

  c.batch_size = 64
  c.epochs = 6
  c.steps_per_epoch = 0         # 0: one pass over the train split

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 0.05
  c.optim.lr_min = 0.0
  c.optim.momentum = 0.9
  c.optim.weight_decay = 3e-4
  c.optim.grad_clip = 5.0

  c.log_every_steps = 10
  c.checkpoint_every_steps = 200
  c.eval_every_epochs = 2       # test accuracy (eval-mode BN); always at the end
  c.keep_checkpoints = 2

  # Devices (trainers/sharding.py): the global batch `batch_size` is split over `mesh.data`
  # devices (-1: all of them, on every host); weights, alphas and optimizer states are
  # replicated. One device computes what N devices compute on the same global batch.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  return c
