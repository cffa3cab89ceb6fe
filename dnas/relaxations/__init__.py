"""Relaxations: architecture parameters -> per-edge op weights, found by name.

A relaxation is a subclass of `Relaxation` registered with `@register('name')`. It has

* `weights(alphas, *, key, step) -> weights`: the op weights the supernet mixes with;
  `alphas` and `weights` are (num_edges, num_ops). `key` is a PRNG key for stochastic
  relaxations, `step` the global search step (an int array) for schedules. `key=None` asks
  for the deterministic weights (the expectation or the mode): supernet evaluation uses them.
* `loss(alphas) -> scalar` (optional, default 0): a term added to the search loss, e.g.
  DrNAS's KL regulariser. It is summed over the cell types and, depending only on the
  alphas, moves the alphas only.
* `genotype_weights(alphas)` (optional, default the deterministic weights): what the
  genotype is read off (top-2 edges per node by strongest non-`none` op, dnas/genotype.py).

Subclasses are frozen dataclasses (made so automatically): their fields are the
hyperparameters, their defaults the paper's. `make(name, args, total_steps=...)` builds one
from `config.relaxation` / `config.relaxation_args` and refuses unknown keys. A relaxation
with a schedule over the whole search declares a field `total_steps`; `make` fills it with
the search length (epochs x steps per epoch), so it is not a user setting.

A relaxation outside the package lives in the user's own file, registers itself on import
and is imported by `load_module` (dnas-search: `--config.relaxation_module=my_relax.py` or
`=my_pkg.my_relax`). A built-in one is a small file here plus an import line below.
"""
import dataclasses
import hashlib
import importlib
import importlib.util
import os
import sys

import jax.numpy as jnp

from dnas.registry import Registry

RELAXATIONS = Registry('relaxation')
get = RELAXATIONS.get
names = RELAXATIONS.names


@dataclasses.dataclass(frozen=True)
class Relaxation:
  """Base class; see the module docstring. Subclasses become frozen dataclasses (hashable
  static data of the model: no arrays in fields)."""

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    dataclasses.dataclass(frozen=True)(cls)

  def weights(self, alphas, *, key, step):
    raise NotImplementedError(f'{type(self).__name__} must define weights(alphas, *, key, step)')

  def loss(self, alphas):
    del alphas
    return 0.0

  def genotype_weights(self, alphas):
    return self.weights(alphas, key=None, step=None)


def register(name: str):
  """Class decorator: `@register('name')` on a `Relaxation` subclass."""
  def decorator(cls):
    if not (isinstance(cls, type) and issubclass(cls, Relaxation)):
      raise TypeError(f'relaxation {name!r} must be a subclass of dnas.relaxations.Relaxation, '
                      f'got {cls!r}')
    return RELAXATIONS.register(name)(cls)
  return decorator


def hyperparameters(cls) -> list[str]:
  """The fields a user may set through `relaxation_args`."""
  return [f.name for f in dataclasses.fields(cls) if f.name != 'total_steps']


def make(name: str, args=None, *, total_steps: int | None = None) -> Relaxation:
  """The relaxation `name` with hyperparameters `args` (a dict or ConfigDict) over the
  paper's defaults; `total_steps` (the search length) feeds a schedule if it has one."""
  cls = get(name)
  args = dict(args.to_dict() if hasattr(args, 'to_dict') else args or {})
  valid = hyperparameters(cls)
  if 'total_steps' in args:
    raise ValueError('relaxation_args.total_steps is set by the search (epochs x steps per '
                     'epoch): leave it out')
  unknown = sorted(set(args) - set(valid))
  if unknown:
    raise ValueError(f'relaxation {name!r} has no hyperparameter(s) {unknown}; valid: '
                     f'{", ".join(valid) or "none"}')
  if total_steps is not None and 'total_steps' in {f.name for f in dataclasses.fields(cls)}:
    args['total_steps'] = int(total_steps)
  return cls(**args)


def load_module(spec: str) -> None:
  """Imports the module that registers a user's relaxation: a .py file or a dotted module
  name on the Python path. Loading the same one again is a no-op."""
  if not spec:
    return
  try:
    if spec.endswith('.py'):
      path = os.path.abspath(os.path.expanduser(spec))
      module_name = f'dnas_user_{hashlib.sha1(path.encode()).hexdigest()[:12]}'
      if module_name in sys.modules:
        return
      if not os.path.exists(path):
        raise FileNotFoundError(f'no such file: {path}')
      module_spec = importlib.util.spec_from_file_location(module_name, path)
      module = importlib.util.module_from_spec(module_spec)
      sys.modules[module_name] = module
      try:
        module_spec.loader.exec_module(module)
      except BaseException:
        del sys.modules[module_name]
        raise
    else:
      importlib.import_module(spec)
  except Exception as e:  # the user's code: any error, reported with what to fix
    raise ValueError(f'cannot import relaxation_module {spec!r} ({type(e).__name__}: {e}); give '
                     f'a .py file or a module on the Python path') from e


def linear_schedule(start: float, end: float, step, total_steps: int | None, name: str):
  """start at step 0 -> end at the last step (total_steps - 1), linearly; end afterwards."""
  if total_steps is None:
    raise ValueError(f'relaxation {name!r} anneals over the search: build it with '
                     f'relaxations.make({name!r}, total_steps=N)')
  frac = jnp.clip(jnp.asarray(step) / max(total_steps - 1, 1), 0.0, 1.0)
  return start + (end - start) * frac


from dnas.relaxations import softmax  # noqa: E402,F401  (each registers itself)
from dnas.relaxations import gumbel_softmax  # noqa: E402,F401
from dnas.relaxations import gumbel_hard  # noqa: E402,F401
from dnas.relaxations import sigmoid  # noqa: E402,F401
from dnas.relaxations import dirichlet  # noqa: E402,F401
