"""Published DARTS-space genotypes, shipped as JSON package data, and name-or-path lookup.

`cells/genotypes/<NAME>.json` holds each cell pair as its authors released it (CIFAR-10
cells), with the paper, the code it was copied from and the reported figures under
`source`. `resolve('DARTS_V2')` and `resolve('/tmp/dnas_default/genotype.json')` both give a
validated `Genotype`, so a search's output and a published cell go through the same door.
"""
import functools
import importlib.resources
import json
import os

from dnas import genotype as genotype_lib
from dnas.cells import darts
from dnas.genotype import Genotype, GenotypeError


def _dir():
  return importlib.resources.files('dnas.cells') / 'genotypes'


@functools.cache
def names() -> tuple[str, ...]:
  return tuple(sorted(p.name[:-len('.json')] for p in _dir().iterdir()
                      if p.name.endswith('.json')))


def source(name: str) -> dict:
  """The `source` record (paper, code, reported figures) of a known genotype."""
  return json.loads((_dir() / f'{_canonical(name)}.json').read_text())['source']


def _canonical(name: str) -> str:
  """Case- and dash-insensitive match: 'pc-darts' -> 'PC_DARTS'."""
  key = name.upper().replace('-', '_')
  for known in names():
    if known.upper() == key:
      return known
  raise GenotypeError(f'unknown genotype {name!r}: not a known name and no such file; known '
                      f'names: {", ".join(names())} (or pass the path of a genotype.json)')


def load(name: str) -> Genotype:
  known = _canonical(name)
  obj = json.loads((_dir() / f'{known}.json').read_text())
  return genotype_lib.from_json(obj, darts.PRIMITIVES, space=darts.SPACE)


def resolve(name_or_path: str) -> Genotype:
  """A known genotype's name, or the path of a genotype JSON file (e.g. a search's
  <workdir>/genotype.json). Raises GenotypeError naming the problem and the fix."""
  if not name_or_path:
    raise GenotypeError(f'no genotype given; pass a known name ({", ".join(names())}) or the '
                        'path of a genotype.json')
  path = os.path.expanduser(str(name_or_path))
  if os.path.exists(path) or os.sep in path or path.endswith('.json'):
    return genotype_lib.load(path, darts.PRIMITIVES, space=darts.SPACE)
  return load(name_or_path)


def label(name_or_path: str) -> str:
  """A short name for tables and plot titles."""
  path = os.path.expanduser(str(name_or_path))
  if os.path.exists(path) or os.sep in path or path.endswith('.json'):
    return path
  return _canonical(name_or_path)
