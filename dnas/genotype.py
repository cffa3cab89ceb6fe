"""Genotypes: the discrete architecture read off the relaxed one, as validated JSON.

Space-agnostic: a cell space is described by its op names, its number of input states and
intermediate nodes. Derivation follows DARTS (Liu et al., 2019, sec. 2.4 and the reference
`model_search.Network.genotype`): for every intermediate node keep the `k` (2) incoming edges
whose strongest non-`none` op weight is largest, and on each kept edge the strongest
non-`none` op. The JSON carries a schema version and the space name so that a file from a
different search space or an older format is refused with a clear message.
"""
import dataclasses
import json
import os
from typing import Sequence

import numpy as np

SCHEMA_VERSION = 1
EXCLUDED_OPS = ('none',)


class GenotypeError(ValueError):
  """A genotype file or object is malformed or belongs to another search space."""


@dataclasses.dataclass(frozen=True)
class Genotype:
  """A DARTS-style cell pair. `normal[i]` = (op, input state) for the edges of node
  i // k; states 0 and 1 are the cell inputs, state 2 + n is intermediate node n."""
  normal: tuple[tuple[str, int], ...]
  normal_concat: tuple[int, ...]
  reduce: tuple[tuple[str, int], ...]
  reduce_concat: tuple[int, ...]
  space: str = 'darts'

  def to_json(self) -> dict:
    return {
        'schema_version': SCHEMA_VERSION,
        'space': self.space,
        'normal': [[op, i] for op, i in self.normal],
        'normal_concat': list(self.normal_concat),
        'reduce': [[op, i] for op, i in self.reduce],
        'reduce_concat': list(self.reduce_concat),
    }


def derive_cell(weights: np.ndarray, ops: Sequence[str], num_nodes: int = 4,
                num_inputs: int = 2, k: int = 2, exclude: Sequence[str] = EXCLUDED_OPS):
  """weights (num_edges, num_ops) -> [(op, input state)] * (k * num_nodes)."""
  weights = np.asarray(weights)
  allowed = [j for j, op in enumerate(ops) if op not in exclude]
  if not allowed:
    raise GenotypeError(f'no op left to choose after excluding {list(exclude)} from {list(ops)}')
  gene, start = [], 0
  for node in range(num_nodes):
    n_in = num_inputs + node
    w = weights[start:start + n_in][:, allowed]
    strength = w.max(axis=1)
    # Stable sort on -strength: ties keep the lower input first, as Python's sorted() does.
    for edge in np.argsort(-strength, kind='stable')[:k]:
      gene.append((ops[allowed[int(np.argmax(w[edge]))]], int(edge)))
    start += n_in
  return tuple(gene)


def derive(normal_weights, reduce_weights, ops: Sequence[str], *, num_nodes: int = 4,
           multiplier: int = 4, space: str = 'darts', k: int = 2) -> Genotype:
  """The genotype of relaxed op weights (after the relaxation, e.g. softmax of the alphas)."""
  concat = tuple(range(2 + num_nodes - multiplier, 2 + num_nodes))
  return Genotype(derive_cell(normal_weights, ops, num_nodes, k=k), concat,
                  derive_cell(reduce_weights, ops, num_nodes, k=k), concat, space)


def validate(genotype: Genotype, ops: Sequence[str], *, space: str, num_nodes: int = 4,
             k: int = 2) -> Genotype:
  """Checks ops, input indices and concat lists; raises GenotypeError naming the problem."""
  if genotype.space != space:
    raise GenotypeError(f'genotype is for the {genotype.space!r} search space, not {space!r}: '
                        f'use a genotype searched in the {space!r} space')
  for cell in ('normal', 'reduce'):
    gene = getattr(genotype, cell)
    if len(gene) != k * num_nodes:
      raise GenotypeError(f'{cell} cell has {len(gene)} edges; a {space} cell with {num_nodes} '
                          f'nodes needs exactly {k * num_nodes} ({k} per node)')
    for i, edge in enumerate(gene):
      if not (isinstance(edge, (tuple, list)) and len(edge) == 2):
        raise GenotypeError(f'{cell}[{i}] = {edge!r}; each edge must be [op_name, input_state]')
      op, src = edge
      if op not in ops:
        raise GenotypeError(f'{cell}[{i}]: unknown op {op!r}; valid ops: {", ".join(ops)}')
      node = i // k
      if not (isinstance(src, int) and 0 <= src < 2 + node):
        raise GenotypeError(f'{cell}[{i}]: input state {src!r} is invalid for node {node} '
                            f'(must be an int in 0..{1 + node})')
    concat = getattr(genotype, cell + '_concat')
    if not concat or any(not isinstance(c, int) or not 0 <= c < 2 + num_nodes for c in concat):
      raise GenotypeError(f'{cell}_concat = {list(concat)!r}; must be state indices in '
                          f'0..{1 + num_nodes}')
  return genotype


def from_json(obj: dict, ops: Sequence[str], *, space: str, num_nodes: int = 4) -> Genotype:
  if not isinstance(obj, dict):
    raise GenotypeError(f'genotype JSON must be an object, got {type(obj).__name__}')
  version = obj.get('schema_version')
  if version != SCHEMA_VERSION:
    raise GenotypeError(f'genotype schema_version is {version!r}; this dnas reads version '
                        f'{SCHEMA_VERSION} (re-export the genotype with this version)')
  missing = [f for f in ('space', 'normal', 'normal_concat', 'reduce', 'reduce_concat')
             if f not in obj]
  if missing:
    raise GenotypeError(f'genotype JSON lacks field(s) {missing}')
  try:
    genotype = Genotype(
        normal=tuple(tuple(e) if isinstance(e, list) else e for e in obj['normal']),
        normal_concat=tuple(obj['normal_concat']),
        reduce=tuple(tuple(e) if isinstance(e, list) else e for e in obj['reduce']),
        reduce_concat=tuple(obj['reduce_concat']),
        space=obj['space'])
  except TypeError as e:
    raise GenotypeError(f'genotype JSON has a field of the wrong type: {e}') from None
  return validate(genotype, ops, space=space, num_nodes=num_nodes)


def save(genotype: Genotype, path: str | os.PathLike) -> None:
  """Writes human-readable JSON atomically (temp file + rename: no half-written genotype)."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(genotype.to_json(), f, indent=2)
    f.write('\n')
  os.replace(tmp, path)


def load(path: str | os.PathLike, ops: Sequence[str], *, space: str,
         num_nodes: int = 4) -> Genotype:
  try:
    with open(path) as f:
      obj = json.load(f)
  except FileNotFoundError:
    raise GenotypeError(f'genotype file {path} does not exist') from None
  except json.JSONDecodeError as e:
    raise GenotypeError(f'{path} is not valid JSON ({e}); a genotype is written by dnas-search '
                        f'as <workdir>/genotype.json') from None
  try:
    return from_json(obj, ops, space=space, num_nodes=num_nodes)
  except GenotypeError as e:
    raise GenotypeError(f'{path}: {e}') from None
