"""Regularizers against skip-connection collapse, found by name and combined in one list.

A regularizer is a subclass of `Regularizer` registered with `@register('name')`; its fields
are its hyperparameters with the paper's defaults (frozen dataclass, like a relaxation).
`make(names, args, total_steps=..., steps_per_epoch=...)` builds the `Regularizers` of
`config.regularizers` with `config.regularizer_args[name]` over the defaults. A regularizer
overrides any of five hooks (the defaults do nothing):

(a) `loss(alphas, step) -> scalar`: a term added to the architecture (val) loss.
    `alphas` is the list of the model's alpha arrays (normal, reduce), `step` the traced
    global step. beta-DARTS, FairDARTS.
(b) `perturb(alphas, *, key, step, loss_fn) -> alphas`: the alphas the weight step uses
    (the state keeps the unperturbed ones). `alphas` is the model's alpha state (a pytree),
    `loss_fn(alphas) -> scalar` the train loss at the current weights on the train batch.
    SDARTS RS / ADV.
(c) `edge_coefficients(step) -> {kind: scalar}`: step-dependent edge-level changes of the
    supernet; the kinds the DARTS space knows are `EDGE_KINDS`. DARTS-, P-DARTS.
(d) `postprocess(genotype, weights, ops, derive) -> genotype`: the derived genotype
    rewritten, e.g. P-DARTS' cap on skips. `weights` are the (normal, reduce) genotype
    weights, `derive(normal, reduce)` re-derives a genotype from modified weights.
(e) `should_stop(history, ops) -> Stop | None`: called at every epoch end with the epoch
    records so far (dicts with `step`, `epoch`, raw alphas `normal`/`reduce`,
    `normal_cell_skips`, `normal_cell_parameter_free`, and `eigenvalue` when a regularizer
    sets `needs_eigenvalue`). R-DARTS,
    DARTS+.

`scalars(step)` (optional) names the schedule values worth logging (coefficients, radii).
A regularizer with a schedule over the search declares fields `total_steps` and/or
`steps_per_epoch`; `make` fills them (they are not user settings).
"""
import dataclasses
from typing import Any, ClassVar, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from dnas.registry import Registry

REGULARIZERS = Registry('regularizer')
get = REGULARIZERS.get
names = REGULARIZERS.names

# Edge-level modifications a search space may be asked for (hook c).
AUX_SKIP = 'aux_skip'          # edge output += coefficient * skip(x)     (DARTS-)
SKIP_DROPOUT = 'skip_dropout'  # dropout of this rate on identity skip outputs (P-DARTS)
EDGE_KINDS = (AUX_SKIP, SKIP_DROPOUT)
_FILLED = ('total_steps', 'steps_per_epoch')


class Stop(NamedTuple):
  """An early-stopping decision: which rule, why, and the epoch whose alphas the genotype
  is read off (None: the current ones)."""
  rule: str
  reason: str
  genotype_epoch: int | None = None


@dataclasses.dataclass(frozen=True)
class Regularizer:
  """Base class; see the module docstring. Subclasses become frozen dataclasses (hashable
  static data of the compiled step: no arrays in fields)."""
  name: ClassVar[str] = '?'
  requires_relaxation: ClassVar[str | None] = None  # e.g. 'sigmoid' for FairDARTS
  needs_eigenvalue: ClassVar[bool] = False          # the trainer computes it every epoch
  edge_kinds: ClassVar[tuple[str, ...]] = ()        # what edge_coefficients returns

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    dataclasses.dataclass(frozen=True)(cls)

  def loss(self, alphas: Sequence[jax.Array], step):
    raise NotImplementedError  # overridden only by regularizers with a loss term

  def perturb(self, alphas, *, key, step, loss_fn):
    raise NotImplementedError

  def edge_coefficients(self, step) -> dict:
    return {}

  def postprocess(self, genotype, weights, ops, derive):
    del weights, ops, derive
    return genotype

  def should_stop(self, history: list[dict], ops: Sequence[str]) -> Stop | None:
    del history, ops
    return None

  def scalars(self, step) -> dict:
    del step
    return {}

  # ---- schedule helpers
  def epoch(self, step):
    """The (0-based, integer) epoch of a step: schedules move once per epoch, as the
    reference codes step them."""
    _require_filled(self, 'steps_per_epoch')
    return jnp.asarray(step) // self.steps_per_epoch

  def epochs(self) -> int:
    _require_filled(self, 'total_steps', 'steps_per_epoch')
    return max(self.total_steps // self.steps_per_epoch, 1)


def _require_filled(reg, *fields):
  for f in fields:
    if getattr(reg, f, None) is None:
      raise ValueError(f'regularizer {reg.name!r} has a schedule over the search: build it with '
                       f'regularizers.make([...], total_steps=N, steps_per_epoch=M)')


def overrides(reg: Regularizer, hook: str) -> bool:
  return getattr(type(reg), hook) is not getattr(Regularizer, hook)


def register(name: str):
  """Class decorator: `@register('name')` on a `Regularizer` subclass."""
  def decorator(cls):
    if not (isinstance(cls, type) and issubclass(cls, Regularizer)):
      raise TypeError(f'regularizer {name!r} must be a subclass of '
                      f'dnas.regularizers.Regularizer, got {cls!r}')
    cls.name = name
    return REGULARIZERS.register(name)(cls)
  return decorator


def hyperparameters(cls) -> list[str]:
  """The fields a user may set through `regularizer_args.<name>`."""
  return [f.name for f in dataclasses.fields(cls) if f.name not in _FILLED]


def default_args() -> dict[str, dict[str, Any]]:
  """{name: {hyperparameter: paper default}} of every registered regularizer (the config
  lists them all, so that each knob is a config field)."""
  return {n: {f.name: f.default for f in dataclasses.fields(get(n)) if f.name not in _FILLED}
          for n in names()}


def alpha_arrays(alphas) -> list[jax.Array]:
  """The alpha arrays of a model's alpha state (normal, reduce for the DARTS space)."""
  return jax.tree.leaves(alphas)


@dataclasses.dataclass(frozen=True)
class Regularizers:
  """The regularizers of one search, composed: loss terms add up, perturbations apply in
  list order, edge coefficients merge (one regularizer per kind), genotype rewrites chain,
  the first early-stopping rule that fires stops the run."""
  items: tuple[Regularizer, ...] = ()

  def __bool__(self):
    return bool(self.items)

  def _with(self, hook):
    return [r for r in self.items if overrides(r, hook)]

  @property
  def needs_eigenvalue(self) -> bool:
    return any(r.needs_eigenvalue for r in self.items)

  @property
  def edge_kinds(self) -> frozenset:
    return frozenset(k for r in self.items for k in r.edge_kinds)

  # (a)
  def has_loss(self) -> bool:
    return bool(self._with('loss'))

  def loss_terms(self, alphas, step) -> dict:
    arrays = alpha_arrays(alphas)
    return {r.name: r.loss(arrays, step) for r in self._with('loss')}

  def loss(self, alphas, step):
    return sum(self.loss_terms(alphas, step).values(), jnp.zeros(()))

  # (b)
  def has_perturbation(self) -> bool:
    return bool(self._with('perturb'))

  def weight_step_alphas(self, alphas, *, key, step, loss_fn):
    perturbers = self._with('perturb')
    for r, k in zip(perturbers, jax.random.split(key, len(perturbers))):
      alphas = r.perturb(alphas, key=k, step=step, loss_fn=loss_fn)
    return jax.lax.stop_gradient(alphas)

  # (c)
  def edge_coefficients(self, step) -> dict:
    out = {}
    for r in self.items:
      out.update(r.edge_coefficients(step))
    return out

  # (d)
  def postprocess(self, genotype, weights, ops, derive):
    for r in self._with('postprocess'):
      genotype = r.postprocess(genotype, weights, ops, derive)
    return genotype

  # (e)
  def should_stop(self, history, ops) -> Stop | None:
    for r in self._with('should_stop'):
      stop = r.should_stop(history, ops)
      if stop is not None:
        return stop
    return None

  def scalars(self, step) -> dict:
    return {f'{r.name}/{k}': v for r in self.items for k, v in r.scalars(step).items()}


def make(regularizer_names: Sequence[str] = (), args=None, *, total_steps: int | None = None,
         steps_per_epoch: int | None = None, relaxation: str | None = None) -> Regularizers:
  """The `Regularizers` of `regularizer_names` (config.regularizers) with
  `args[name]` (config.regularizer_args) over the paper defaults. `args` may hold entries
  for regularizers that are not selected (the default config lists them all); those are
  ignored. `relaxation` (config.relaxation) is checked against what a regularizer needs."""
  if isinstance(regularizer_names, str):
    raise ValueError(f'config.regularizers must be a list of names, got the string '
                     f'{regularizer_names!r}; write e.g. "(\'{regularizer_names}\',)"')
  regularizer_names = tuple(regularizer_names)
  dupes = sorted({n for n in regularizer_names if regularizer_names.count(n) > 1})
  if dupes:
    raise ValueError(f'config.regularizers lists {dupes} more than once; list each once')
  args = args.to_dict() if hasattr(args, 'to_dict') else dict(args or {})
  items, kinds = [], {}
  for name in regularizer_names:
    cls = get(name)
    given = args.get(name) or {}
    given = dict(given.to_dict() if hasattr(given, 'to_dict') else given)
    valid = hyperparameters(cls)
    for f in _FILLED:
      if f in given:
        raise ValueError(f'regularizer_args.{name}.{f} is set by the search (epochs x steps '
                         f'per epoch): leave it out')
    unknown = sorted(set(given) - set(valid))
    if unknown:
      raise ValueError(f'regularizer {name!r} has no hyperparameter(s) {unknown}; valid: '
                       f'{", ".join(valid) or "none"}')
    if cls.requires_relaxation and relaxation is not None and relaxation != cls.requires_relaxation:
      raise ValueError(f'regularizer {name!r} works on the {cls.requires_relaxation!r} '
                       f'relaxation, not {relaxation!r}: set '
                       f'--config.relaxation={cls.requires_relaxation}')
    fields = {f.name for f in dataclasses.fields(cls)}
    if 'total_steps' in fields and total_steps is not None:
      given['total_steps'] = int(total_steps)
    if 'steps_per_epoch' in fields and steps_per_epoch is not None:
      given['steps_per_epoch'] = int(steps_per_epoch)
    reg = cls(**given)
    for kind in cls.edge_kinds:
      if kind in kinds:
        raise ValueError(f'regularizers {kinds[kind]!r} and {name!r} both set the edge '
                         f'modification {kind!r}; keep one of them')
      kinds[kind] = name
    items.append(reg)
  return Regularizers(tuple(items))


from dnas.regularizers import beta_decay  # noqa: E402,F401  (each registers itself)
from dnas.regularizers import zero_one  # noqa: E402,F401
from dnas.regularizers import sdarts_rs  # noqa: E402,F401
from dnas.regularizers import sdarts_adv  # noqa: E402,F401
from dnas.regularizers import darts_minus  # noqa: E402,F401
from dnas.regularizers import pdarts  # noqa: E402,F401
from dnas.regularizers import rdarts  # noqa: E402,F401
from dnas.regularizers import darts_plus  # noqa: E402,F401
