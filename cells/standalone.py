"""Stand-alone networks of any search space, from what a user passes as a genotype.

`resolve(arg)` takes what `--genotype` / `--config.genotype` receive and says which space it
belongs to:

    DARTS_V2, pc-darts, ...                a published DARTS cell pair (cells/known_genotypes.py)
    /path/genotype.json                    a search's output: DARTS (schema 1) or {space: nb201}
    |nor_conv_3x3~0|+|...~0|...~1|+|...|   a NAS-Bench-201 arch string

`build(arch, network=...)` makes its stand-alone network with one call signature for both
spaces, `model(x, train, key=None, drop_prob=0.) -> (logits, aux_logits or None)`, so that
dnas-retrain and dnas-bench drive every network alike:

    cifar, imagenet   cells/eval_network.py (DARTS evaluation networks)
    nb201             cells/nb201.py `Network` (NB201's TinyNetwork), wrapped by `NB201Eval`

`num_params`, `analytic_flops` (XLA's convention) and `paper_macs` (the papers' multiply-adds)
count both. For NB201 "paper" is NAS-Bench-201's own counter (AutoDL-Projects
`utils/flop_benchmark.py`, the benchmark's `flops`): every tap of every conv, the classifier's
in x out plus its bias; pools, BN, ReLU and sums not counted.
"""
import dataclasses
import json
import os
from typing import Sequence

from flax import nnx

from dnas import genotype as genotype_lib, nb201_string
from dnas.cells import darts, eval_network, known_genotypes, nb201
from dnas.genotype import Genotype, GenotypeError

NETWORKS = {darts.SPACE: ('cifar', 'imagenet'), nb201.SPACE: ('nb201',)}


@dataclasses.dataclass(frozen=True)
class Arch:
  """An architecture and its space: a DARTS `Genotype` or an NB201 arch string."""
  space: str
  genotype: Genotype | str
  label: str  # short name for tables, titles, file names

  def to_json(self) -> dict:
    if self.space == nb201.SPACE:
      return nb201_string.to_json(self.genotype)
    return self.genotype.to_json()

  def save(self, path) -> None:
    if self.space == nb201.SPACE:
      nb201_string.save(self.genotype, path)
    else:
      genotype_lib.save(self.genotype, path)

  def default_network(self) -> str:
    return NETWORKS[self.space][0]


def _looks_like_arch_string(arg: str) -> bool:
  return arg.startswith('|') or ('~' in arg and '+' in arg and os.sep not in arg)


def resolve(arg: str) -> Arch:
  """A known DARTS name, a genotype.json path (either space) or an NB201 arch string.
  Raises GenotypeError naming the problem and what to pass instead."""
  if not arg:
    raise GenotypeError(f'no genotype given; pass a known name '
                        f'({", ".join(known_genotypes.names())}), a NAS-Bench-201 arch string '
                        f'({nb201_string.EXAMPLE}) or the path of a genotype.json')
  arg = str(arg)
  if _looks_like_arch_string(arg):
    return Arch(nb201.SPACE, nb201_string.format(nb201_string.parse(arg)), arg)
  path = os.path.expanduser(arg)
  if os.path.isfile(path):
    try:
      with open(path) as f:
        space = json.load(f).get('space')
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
      space = None  # the space's own loader reports what is wrong with the file
    if space == nb201.SPACE:
      return Arch(nb201.SPACE, nb201_string.load(path), path)
  return Arch(darts.SPACE, known_genotypes.resolve(arg), known_genotypes.label(arg))


# ---------------------------------------------------------------------------- networks


class NB201Eval(nnx.Module):
  """`nb201.Network` with the DARTS evaluation networks' call signature: no auxiliary head
  and no drop-path (NB201's recipe has neither), so `key` and `drop_prob` are unused."""

  def __init__(self, arch: str, *, num_classes: int, in_channels: int, channels: int,
               cells_per_stage: int, rngs: nnx.Rngs):
    self.net = nb201.Network(arch, num_classes=num_classes, in_channels=in_channels,
                             channels=channels, cells_per_stage=cells_per_stage, rngs=rngs)

  def __call__(self, x, train: bool, key=None, drop_prob=0.0):
    del key, drop_prob
    return self.net(x, train), None


def check_network(arch: Arch, network: str) -> None:
  """A genotype can only build its own space's networks."""
  if network not in NETWORKS[arch.space]:
    raise ValueError(f'network {network!r} cannot be built from the {arch.space} genotype '
                     f'{arch.label}: a {arch.space} genotype builds '
                     f'{" or ".join(NETWORKS[arch.space])}')


def build(arch: Arch, network: str | None = None, *, num_classes: int, in_channels: int,
          image_size: int, channels: int, layers: int | None = None,
          cells_per_stage: int | None = None, auxiliary: bool = False,
          conv_form: str = 'auto', seed: int = 0) -> nnx.Module:
  """The stand-alone network of `arch`. DARTS networks take `layers` (cells), NB201 takes
  `cells_per_stage` (N); `auxiliary` and `conv_form` are DARTS-only."""
  network = network or arch.default_network()
  check_network(arch, network)
  rngs = nnx.Rngs(seed)
  if network == 'nb201':
    return NB201Eval(arch.genotype, num_classes=num_classes, in_channels=in_channels,
                     channels=channels, cells_per_stage=cells_per_stage, rngs=rngs)
  cls = eval_network.NetworkCIFAR if network == 'cifar' else eval_network.NetworkImageNet
  return cls(arch.genotype, num_classes=num_classes, in_channels=in_channels,
             image_size=image_size, channels=channels, layers=layers, auxiliary=auxiliary,
             conv_form=conv_form, rngs=rngs)


def num_params(model: nnx.Module) -> int:
  """Trainable parameters without an auxiliary head (the papers' figure)."""
  return eval_network.num_params(model)


def analytic_flops(model: nnx.Module, batch: int, image_hw: tuple[int, int]) -> int:
  """2 x the conv / linear multiply-adds the compiled forward pass computes (XLA's count
  without the elementwise ops)."""
  if isinstance(model, NB201Eval):
    return 2 * nb201_conv_macs(model.net, batch, image_hw)
  return eval_network.analytic_flops(model, batch, image_hw)


def paper_macs(model: nnx.Module, batch: int, image_hw: tuple[int, int]) -> int:
  """Multiply-adds as the space's papers count them (module docstring)."""
  if isinstance(model, NB201Eval):
    return nb201_conv_macs(model.net, batch, image_hw, paper=True)
  return eval_network.conv_macs(model, batch, image_hw, paper=True)


def conv_forms(model: nnx.Module) -> list[str]:
  """The conv forms a DARTS network uses (cells/ops.py); NB201's convs are dense."""
  if isinstance(model, NB201Eval):
    return ['dense']
  return sorted({op.form for cell in model.cells for op in cell.ops if hasattr(op, 'form')})


def in_channels_of(model: nnx.Module) -> int:
  if isinstance(model, NB201Eval):
    return model.net.stem_w.shape[2]
  stem = model.stem_w if hasattr(model, 'stem_w') else model.stem0_w1
  return stem.shape[2]


# ------------------------------------------------------------------- NB201 analytic count


def live_edges(arch_ops: Sequence[str]) -> tuple[int, ...]:
  """Edges of an NB201 cell whose output reaches the cell output (node 3) through non-`none`
  ops. PyTorch runs a conv on any other edge too; a compiled network does not (XLA removes
  computation whose result is unused)."""
  live_nodes = {nb201.NUM_NODES - 1}
  for target in range(nb201.NUM_NODES - 1, 0, -1):
    if target in live_nodes:
      live_nodes |= {j for e, (i, j) in enumerate(nb201.EDGES)
                     if i == target and arch_ops[e] != 'none'}
  return tuple(e for e, (i, _) in enumerate(nb201.EDGES)
               if arch_ops[e] != 'none' and i in live_nodes)


def nb201_conv_macs(model: nb201.Network, batch: int, image_hw: tuple[int, int],
                    paper: bool = False) -> int:
  """Multiply-adds of the convs and the classifier of one NB201 forward pass.

  paper=False: what the compiled network computes, as XLA's cost analysis counts it (only
  kernel taps that read inside the input, only convs on `live_edges`). paper=True:
  NAS-Bench-201's count (every tap of every conv, classifier in x out + bias).
  """
  h, w = image_hw
  c_in, c = model.stem_w.shape[2], model.stem_w.shape[3]
  total = eval_network.dense_conv_macs(h, w, 3, 1, 1, 1, c_in, c, paper)[0]
  for cell in model.cells:
    if isinstance(cell, nb201.ResidualReduction):
      c_in, c = cell.conv_a.w.shape[2], cell.conv_a.w.shape[3]
      macs, ho, wo = eval_network.dense_conv_macs(h, w, 3, 2, 1, 1, c_in, c, paper)
      total += macs + eval_network.dense_conv_macs(ho, wo, 3, 1, 1, 1, c, c, paper)[0]
      total += (h // 2) * (w // 2) * c_in * c  # the 1x1 conv of the 2x2-pooled shortcut
      h, w = ho, wo
      continue
    for e in (range(nb201.NUM_EDGES) if paper else live_edges(cell.arch_ops)):
      k = nb201.CONV_KERNEL.get(cell.arch_ops[e])
      if k:
        total += eval_network.dense_conv_macs(h, w, k, 1, 1, k // 2, c, c, paper)[0]
  fc = model.classifier
  total += fc.in_features * fc.out_features + (fc.out_features if paper else 0)
  return batch * total
