"""The search spaces the search loop runs, selected by `config.model.space`.

A space tells the loop how to check its model config, build its supernet, name its cell
types (TensorBoard), read off and write its genotype. The loop itself (bilevel step,
checkpoints, alpha history) is the same for every space.

  darts   cells/darts.py: normal + reduce cells, genotype.json = DARTS genotype (schema 1)
  nb201   cells/nb201.py: one shared cell, genotype.json = {"arch": NAS-Bench-201 arch string}

Both take PC-DARTS' switches (cells/pcdarts.py) from `config.model.partial_channels` (K; 1 =
off) and `config.model.edge_normalization`; a config without them searches without.
"""
import json

import numpy as np
from flax import nnx

from dnas import genotype as genotype_lib, nb201_string, regularizers
from dnas.cells import darts, nb201, pcdarts
from dnas.registry import Registry

SPACES = Registry('search space')


def get(name: str) -> 'SearchSpace':
  """The space named `name`; an unknown name lists the valid ones."""
  return SPACES.get(name)()


class SearchSpace:
  """What the search loop needs of a space. `model` is its built supernet.

  `build` and `derive` serve the spaces other than DARTS: trainers/search.py builds the DARTS
  supernet and derives its genotype itself (`build_model`, `derive_genotype`), where the
  DARTS-only hooks (regularizers) sit."""

  def check(self, config) -> None:
    """Rejects a model config this space cannot build, naming the field and the fix."""

  def build(self, config, spec, relaxation, seed: int):
    raise NotImplementedError

  def describe(self, config) -> str:
    """The space part of the run's first line."""
    raise NotImplementedError

  def op_weights(self, model) -> dict[str, np.ndarray]:
    """Cell type -> the relaxation's deterministic op weights (edges, ops)."""
    raise NotImplementedError

  def derive(self, config, model):
    """The genotype read off the model's `genotype_weights()`."""
    raise NotImplementedError

  def to_json(self, geno) -> dict:
    raise NotImplementedError

  def save(self, geno, path) -> None:
    raise NotImplementedError

  def summary(self, geno) -> str:
    """One line for the per-epoch progress message."""
    raise NotImplementedError

  def skips(self, geno) -> int:
    """skip_connect count of the (normal) cell: the DARTS collapse indicator."""
    raise NotImplementedError

  def report(self, geno, path) -> str:
    """What the search prints at the end."""
    raise NotImplementedError


PCDARTS_OFF = {'partial_channels': 1, 'edge_normalization': False}


def pcdarts_settings(config) -> dict:
  """The supernet's PC-DARTS keyword arguments from config.model (absent fields: off),
  checked: K an int >= 1 dividing config.model.channels, edge_normalization a bool."""
  m = config.model
  k = m.get('partial_channels', 1)
  normalize = m.get('edge_normalization', False)
  try:
    pcdarts.check_partial_channels(k, [m.channels], f'config.model.channels={m.channels}')
  except ValueError as e:
    raise ValueError(f'config.model.{e}') from None
  if not isinstance(normalize, bool):
    raise ValueError(f'config.model.edge_normalization must be True or False, got '
                     f'{normalize!r}')
  return {'partial_channels': k, 'edge_normalization': normalize}


def describe_pcdarts(config) -> str:
  s = pcdarts_settings(config)
  parts = ([f'partial channels 1/{s["partial_channels"]}'] if s['partial_channels'] > 1
           else []) + (['edge normalisation'] if s['edge_normalization'] else [])
  return ''.join(f', {p}' for p in parts)


def model_identity(config) -> dict:
  """config.model for the workdir identity. PC-DARTS' fields at their off values are left
  out, so that workdirs of searches from before they existed still match."""
  model = config.model.to_dict()
  for field, off in PCDARTS_OFF.items():
    if model.get(field, off) == off:
      model.pop(field, None)
  return model


def _missing(config, fields, example) -> None:
  missing = [f for f in fields if f not in config.model]
  if missing:
    raise ValueError(f'config.model lacks field(s) {missing} for the {config.model.space!r} '
                     f'search space: start from {example}')


@SPACES.register(darts.SPACE)
class DartsSpace(SearchSpace):
  """The DARTS CNN space (cells/darts.py); built and derived in trainers/search.py."""

  def check(self, config):
    _missing(config, ('channels', 'layers', 'num_nodes', 'primitives', 'conv_form'),
             'configs/default.py')
    darts.check_primitives(config.model.primitives)
    if pcdarts_settings(config)['edge_normalization']:
      regs = regularizers.make(config.get('regularizers', ()), config.get('regularizer_args'),
                               total_steps=1, steps_per_epoch=1, relaxation=config.relaxation)
      if regs.has_loss() or regs.has_perturbation() or regs.needs_eigenvalue:
        raise ValueError(f'config.regularizers {list(config.regularizers)} read every '
                         f'architecture parameter as op alphas, and edge normalisation adds '
                         f'the betas: set config.model.edge_normalization=False, or use only '
                         f'darts_minus, pdarts, darts_plus with it')

  def describe(self, config):
    return (f'DARTS space ({config.model.layers} cells, C={config.model.channels}'
            f'{describe_pcdarts(config)})')

  def op_weights(self, model):
    return dict(zip(('normal', 'reduce'), (np.asarray(w) for w in model.op_weights())))

  def to_json(self, geno):
    return geno.to_json()

  def save(self, geno, path):
    genotype_lib.save(geno, path)

  def summary(self, geno):
    return f'normal cell: {[op for op, _ in geno.normal]}'

  def skips(self, geno):
    return sum(op == 'skip_connect' for op, _ in geno.normal)

  def report(self, geno, path):
    return f'genotype ({path}):\n{json.dumps(geno.to_json(), indent=None)}'


@SPACES.register(nb201.SPACE)
class NB201Space(SearchSpace):
  """The NAS-Bench-201 space (cells/nb201.py); the genotype is an arch string."""

  def check(self, config):
    _missing(config, ('channels', 'cells_per_stage', 'primitives', 'track_running_stats'),
             'configs/nb201_default.py')
    try:
      nb201.check_primitives(config.model.primitives)
    except ValueError as e:
      raise ValueError(f'{e} (config.model.primitives; configs/nb201_default.py lists them)'
                       ) from None
    for field in ('channels', 'cells_per_stage'):
      if int(config.model[field]) <= 0:
        raise ValueError(f'config.model.{field} must be positive, got {config.model[field]}')
    if config.get('regularizers'):
      raise ValueError(f'config.regularizers {list(config.regularizers)} apply to the DARTS '
                       f'space only; leave them unset for an nb201 search')
    if not isinstance(config.model.track_running_stats, bool):
      raise ValueError(f'config.model.track_running_stats must be True or False, got '
                       f'{config.model.track_running_stats!r}')
    pcdarts_settings(config)

  def build(self, config, spec, relaxation, seed):
    return nb201.SearchNetwork(
        num_classes=spec.num_classes, in_channels=spec.image_shape[-1],
        channels=config.model.channels, cells_per_stage=config.model.cells_per_stage,
        primitives=tuple(config.model.primitives), relaxation=relaxation,
        track_running_stats=config.model.track_running_stats, **pcdarts_settings(config),
        rngs=nnx.Rngs(seed))

  def describe(self, config):
    m = config.model
    bn = 'running' if m.track_running_stats else 'batch'
    return (f'NAS-Bench-201 space (3 x {m.cells_per_stage} cells, C={m.channels}, '
            f'cell BN {bn} statistics{describe_pcdarts(config)})')

  def op_weights(self, model):
    return {'cell': np.asarray(model.op_weights())}

  def derive(self, config, model):
    return nb201_string.derive(np.asarray(model.genotype_weights()),
                               tuple(config.model.primitives))

  def to_json(self, geno):
    return nb201_string.to_json(geno)

  def save(self, geno, path):
    nb201_string.save(geno, path)

  def summary(self, geno):
    return f'arch: {geno}'

  def skips(self, geno):
    return nb201_string.parse(geno).count('skip_connect')

  def report(self, geno, path):
    return f'arch ({path}):\n{geno}'
