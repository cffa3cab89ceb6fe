"""Default search: first-order DARTS on mnist5k (5,000 real MNIST digits, offline).

    dnas-search --config=configs/default.py --workdir=/tmp/dnas_default

About 5.5 minutes on 2 CPU cores (about 1 of them compiling), ending above 90 % supernet val
accuracy. Same recipe as the paper's CIFAR-10 search (configs/cifar10_darts.py), shrunk to
fit: 4 cells (normal, reduce, reduce, normal) of 4 initial channels, batch 32, 3 epochs.
"""
import ml_collections

from dnas import regularizers


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 2
  c.dataset = 'mnist5k'       # trainers/data.py DATASETS: mnist5k | cifar10
  c.data_dir = '~/tensorflow_datasets'

  c.model = ml_collections.ConfigDict()
  c.model.space = 'darts'
  c.model.channels = 4
  c.model.layers = 4
  c.model.num_nodes = 4
  c.model.primitives = ('none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect',
                        'sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5')
  c.model.conv_form = 'auto'  # auto | folded | shift | grouped (cells/ops.py)
  # PC-DARTS (cells/pcdarts.py; its paper settings: configs/pcdarts.py): K > 1 sends 1/K of
  # every edge's channels through the ops (K must divide channels); edge_normalization adds
  # per-edge betas (softmax over each node's incoming edges), trained with the alphas.
  c.model.partial_channels = 1
  c.model.edge_normalization = False

  c.relaxation = 'softmax'      # dnas/relaxations: softmax | gumbel_softmax | gumbel_hard |
                                # sigmoid | dirichlet, or one registered by relaxation_module
  # Hyperparameters over the relaxation's paper defaults, e.g.
  # --config.relaxation_args="{'tau_min': 0.1}"; an unknown key is an error.
  c.relaxation_args = ml_collections.ConfigDict()
  c.relaxation_module = ''      # a .py file or module name that registers a user relaxation

  # Regularizers against skip collapse (dnas/regularizers), combined in one list, e.g.
  # --config.regularizers="('beta_decay', 'sdarts_rs')": beta_decay | zero_one (with the
  # sigmoid relaxation) | sdarts_rs | sdarts_adv | darts_minus | pdarts | rdarts | darts_plus.
  # Every hyperparameter is a field here with its paper's default, e.g.
  # --config.regularizer_args.pdarts.max_skips=3 (only the selected ones are used).
  c.regularizers = ()
  c.regularizer_args = ml_collections.ConfigDict(regularizers.default_args())

  c.bilevel = ml_collections.ConfigDict()
  c.bilevel.order = 1           # 1: first order | 2: unrolled (dnas/unrolled.py)
  # Second order only (an error with order 1): how the Hessian-vector product is computed,
  # finite_difference (the paper, the default) | exact; and the virtual step xi (None: the
  # weight learning rate, as the paper).
  c.bilevel.hvp = ml_collections.config_dict.placeholder(str)
  c.bilevel.xi = ml_collections.config_dict.placeholder(float)

  c.batch_size = 32
  c.epochs = 3
  c.steps_per_epoch = 0         # 0: one pass over the train split

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 0.025
  c.optim.lr_min = 0.001
  c.optim.momentum = 0.9
  c.optim.weight_decay = 3e-4
  c.optim.grad_clip = 5.0
  c.optim.arch_lr = 3e-4
  c.optim.arch_b1 = 0.5
  c.optim.arch_b2 = 0.999
  c.optim.arch_weight_decay = 1e-3
  c.optim.arch_warmup_epochs = 0  # epochs that train only the weights (PC-DARTS: 15)

  c.log_every_steps = 5
  c.checkpoint_every_steps = 50
  c.eval_every_epochs = 1      # supernet accuracy on the full val split (eval-mode BN)
  c.keep_checkpoints = 2

  # Devices (trainers/sharding.py): the global batch `batch_size` is split over `mesh.data`
  # devices (-1: all of them, on every host); weights, alphas and optimizer states are
  # replicated. One device computes what N devices compute on the same global batch.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  return c
