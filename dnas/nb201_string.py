"""NAS-Bench-201 architectures as arch strings: parse, format, enumerate, derive, JSON.

An NB201 cell (Dong & Yang, ICLR 2020) has 4 nodes; node 0 is the cell input and node
i = 1..3 sums one op applied to each earlier node j < i: 6 edges, each one of 5 ops, so
5**6 = 15,625 architectures. The standard string lists, node by node, `op~j` for every input j:

    |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|

Edges are numbered as the reference search cell numbers them (`edge2index` of
D-X-Y/AutoDL-Projects' SearchCell, its sorted '{i}<-{j}' keys): 1<-0, 2<-0, 2<-1, 3<-0,
3<-1, 3<-2, which is also the order of the string. An architecture is here the tuple of its
6 op names in that order; `format` and `parse` convert to and from the string.

Deriving the architecture from relaxed op weights takes, per edge, the argmax over *all* ops,
`none` included, as the reference DARTS / GDAS / SETN codes on NB201 do
(`TinyNetworkDarts.genotype`): `none` may win an edge, and a node whose inputs are all `none`
outputs zeros. Every such architecture is one of the 15,625 the benchmark trained.
"""
import itertools
import json
import os
from typing import Sequence

import numpy as np

from dnas.genotype import GenotypeError, SCHEMA_VERSION

SPACE = 'nb201'
OPS = ('none', 'skip_connect', 'nor_conv_1x1', 'nor_conv_3x3', 'avg_pool_3x3')
NUM_NODES = 4
# (target node, source node) of every edge, in the reference's edge order.
EDGES = tuple((i, j) for i in range(1, NUM_NODES) for j in range(i))
NUM_EDGES = len(EDGES)
EXAMPLE = '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|'


class ArchStringError(GenotypeError):
  """An arch string (or its JSON file) is malformed."""


def check_ops(ops: Sequence[str], valid: Sequence[str] = OPS) -> tuple[str, ...]:
  """The 6 op names of an architecture, in edge order; raises naming the problem."""
  if isinstance(ops, str) or len(ops) != NUM_EDGES:
    raise ArchStringError(f'an NB201 architecture has {NUM_EDGES} edge ops, got {ops!r}')
  unknown = sorted({op for op in ops if op not in valid})
  if unknown:
    raise ArchStringError(f'unknown NAS-Bench-201 op(s) {unknown}; valid ops: {", ".join(valid)}')
  return tuple(ops)


def format(ops: Sequence[str], valid: Sequence[str] = OPS) -> str:  # noqa: A001 (module API)
  """('nor_conv_3x3', ...) in edge order -> '|nor_conv_3x3~0|+|...~0|...~1|+|...|'."""
  ops = check_ops(ops, valid)
  nodes = []
  for i in range(1, NUM_NODES):
    entries = [f'{ops[e]}~{j}' for e, (target, j) in enumerate(EDGES) if target == i]
    nodes.append('|' + '|'.join(entries) + '|')
  return '+'.join(nodes)


def parse(arch: str, valid: Sequence[str] = OPS) -> tuple[str, ...]:
  """An arch string -> its 6 op names in edge order.

  Strict: 3 node groups joined by '+', each written '|op~j|op~j|...|' with every input
  j < node exactly once (any order within a node); no whitespace. Raises ArchStringError
  naming the problem and showing a valid string.
  """
  if not isinstance(arch, str):
    raise ArchStringError(f'an arch string must be a str, got {type(arch).__name__}')
  hint = f'; a valid arch string looks like {EXAMPLE}'
  groups = arch.split('+')
  if len(groups) != NUM_NODES - 1:
    raise ArchStringError(f'arch string {arch!r} has {len(groups)} node group(s) separated by '
                          f"'+'; NAS-Bench-201 needs {NUM_NODES - 1}{hint}")
  ops = {}
  for node, group in enumerate(groups, start=1):
    if len(group) < 2 or not (group.startswith('|') and group.endswith('|')):
      raise ArchStringError(f'node {node} of arch string {arch!r} is {group!r}: each node group '
                            f"must start and end with '|'{hint}")
    entries = group[1:-1].split('|')
    if len(entries) != node:
      raise ArchStringError(f'node {node} of arch string {arch!r} has {len(entries)} input(s) '
                            f'({group!r}); node {node} takes exactly {node}, one from each of '
                            f'nodes 0..{node - 1}{hint}')
    for entry in entries:
      op, sep, source = entry.partition('~')
      if not sep or not source.isdigit() or str(int(source)) != source:
        raise ArchStringError(f'node {node} of arch string {arch!r}: entry {entry!r} is not '
                              f"'op~input' with an integer input{hint}")
      if op not in valid:
        raise ArchStringError(f'node {node} of arch string {arch!r}: unknown NAS-Bench-201 op '
                              f'{op!r}; valid ops: {", ".join(valid)}')
      j = int(source)
      if j >= node:
        raise ArchStringError(f'node {node} of arch string {arch!r}: input {j} is not an earlier '
                              f'node (node {node} reads nodes 0..{node - 1}){hint}')
      if (node, j) in ops:
        raise ArchStringError(f'node {node} of arch string {arch!r} lists input {j} twice{hint}')
      ops[(node, j)] = op
  return tuple(ops[edge] for edge in EDGES)


def all_archs(valid: Sequence[str] = OPS) -> list[str]:
  """Every architecture of the space (15,625 with the 5 NB201 ops), as arch strings, in the
  order of AutoDL-Projects' `Structure.gen_all` (edge 1<-0 varies slowest)."""
  return [format(ops, valid) for ops in itertools.product(valid, repeat=NUM_EDGES)]


def derive(weights, ops: Sequence[str] = OPS) -> str:
  """The arch string of relaxed op weights (NUM_EDGES, len(ops)): per edge the argmax over
  all ops, `none` included (the NB201 DARTS codes' rule; first op wins a tie)."""
  weights = np.asarray(weights)
  if weights.shape != (NUM_EDGES, len(ops)):
    raise ArchStringError(f'op weights have shape {weights.shape}; NB201 needs '
                          f'({NUM_EDGES}, {len(ops)}) = (edges, ops)')
  return format([ops[int(k)] for k in np.argmax(weights, axis=1)], ops)


# ---------------------------------------------------------------------------------- JSON


def to_json(arch: str) -> dict:
  parse(arch)
  return {'schema_version': SCHEMA_VERSION, 'space': SPACE, 'arch': arch}


def from_json(obj) -> str:
  if not isinstance(obj, dict):
    raise ArchStringError(f'an NB201 genotype JSON must be an object, got {type(obj).__name__}')
  if obj.get('schema_version') != SCHEMA_VERSION:
    raise ArchStringError(f'genotype schema_version is {obj.get("schema_version")!r}; this dnas '
                          f'reads version {SCHEMA_VERSION}')
  if obj.get('space') != SPACE:
    raise ArchStringError(f'genotype is for the {obj.get("space")!r} search space, not '
                          f"'{SPACE}': use an architecture searched in the NB201 space")
  if 'arch' not in obj:
    raise ArchStringError("NB201 genotype JSON lacks the field 'arch' (the arch string)")
  parse(obj['arch'])
  return obj['arch']


def save(arch: str, path: str | os.PathLike) -> None:
  """{'schema_version', 'space': 'nb201', 'arch'} as JSON, written atomically."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(to_json(arch), f, indent=2)
    f.write('\n')
  os.replace(tmp, path)


def load(path: str | os.PathLike) -> str:
  """The arch string of a genotype.json written by an NB201 search."""
  try:
    with open(path) as f:
      obj = json.load(f)
  except FileNotFoundError:
    raise ArchStringError(f'genotype file {path} does not exist') from None
  except json.JSONDecodeError as e:
    raise ArchStringError(f'{path} is not valid JSON ({e})') from None
  try:
    return from_json(obj)
  except ArchStringError as e:
    raise ArchStringError(f'{path}: {e}') from None
