"""Default NAS-Bench-201 search: first-order DARTS on mnist5k (offline), NB201 space.

    dnas-search --config=configs/nb201_default.py --workdir=/tmp/dnas_nb201

The NB201 supernet (cells/nb201.py: 3 stages of N cells with 6 mixed-op edges over none,
skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3, residual reduction blocks) shrunk
to fit 2 CPU cores: C=8, N=1, batch 64, 4 epochs (124 steps); prints and writes the derived
arch string (<workdir>/genotype.json). Measured: 2.3 minutes on the 2-core dev machine under
a load of ~6 from other jobs (compile + first step 30 s, no compilation cache), peak RSS
1.3 GiB, 94.9 % supernet val accuracy, arch
|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|nor_conv_3x3~2|.
The optimizer settings are the DARTS ones the NB201 search scripts use (SGD 0.025 cosine
to 0.001, momentum 0.9, wd 3e-4, clip 5; Adam 3e-4, betas (0.5, 0.999), wd 1e-3).
NAS-Bench-201's own search: C=16, N=5, CIFAR, 50 epochs, batch 64.
"""
import ml_collections

from dnas import nb201_string


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 2
  c.dataset = 'mnist5k'       # trainers/data.py DATASETS: mnist5k | cifar10
  c.data_dir = '~/tensorflow_datasets'

  c.model = ml_collections.ConfigDict()
  c.model.space = 'nb201'       # trainers/spaces.py: darts | nb201
  c.model.channels = 8          # C: the stages have C, 2C, 4C channels
  c.model.cells_per_stage = 1   # N
  c.model.primitives = nb201_string.OPS
  # Cell BNs: False = batch statistics also in evaluation (NB201's recommended BN=0);
  # True = PyTorch running averages.
  c.model.track_running_stats = False
  # PC-DARTS (cells/pcdarts.py; its paper settings: configs/pcdarts.py): K > 1 sends 1/K of
  # every edge's channels through the ops (K must divide channels); edge_normalization adds
  # per-edge betas (softmax over each node's incoming edges), trained with the alphas.
  c.model.partial_channels = 1
  c.model.edge_normalization = False

  c.relaxation = 'softmax'      # dnas/relaxations: softmax | gumbel_softmax | gumbel_hard |
                                # sigmoid | dirichlet, or one registered by relaxation_module
  c.relaxation_args = ml_collections.ConfigDict()
  c.relaxation_module = ''

  c.bilevel = ml_collections.ConfigDict()
  c.bilevel.order = 1
  c.bilevel.hvp = ml_collections.config_dict.placeholder(str)
  c.bilevel.xi = ml_collections.config_dict.placeholder(float)

  c.batch_size = 64
  c.epochs = 4
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

  c.log_every_steps = 5
  c.checkpoint_every_steps = 50
  c.eval_every_epochs = 1
  c.keep_checkpoints = 2

  # Devices (trainers/sharding.py): the global batch `batch_size` is split over `mesh.data`
  # devices (-1: all of them, on every host); weights, alphas and optimizer states are
  # replicated. One device computes what N devices compute on the same global batch.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  return c
