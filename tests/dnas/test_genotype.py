"""Genotype derivation against a brute-force reimplementation, and JSON validation."""
import itertools
import json

import numpy as np
import pytest

from dnas import genotype as g
from dnas.cells import darts

OPS = darts.PRIMITIVES


def brute_force_cell(w, ops, num_nodes=4):
  """For each node, try every pair of distinct inputs and keep the pair that DARTS' rule
  selects: both edges at least as strong as every edge left out (ties: lower input first),
  ordered strongest first; on each edge the strongest non-none op (ties: first)."""
  gene, start = [], 0
  for node in range(num_nodes):
    n = 2 + node
    strength = [max(w[start + j][k] for k in range(len(ops)) if ops[k] != 'none')
                for j in range(n)]
    rank_key = lambda j: (-strength[j], j)
    best = None
    for pair in itertools.permutations(range(n), 2):
      if rank_key(pair[0]) > rank_key(pair[1]):
        continue
      left_out = [j for j in range(n) if j not in pair]
      if all(rank_key(pair[1]) < rank_key(j) for j in left_out):
        best = pair
    for j in best:
      cands = [k for k in range(len(ops)) if ops[k] != 'none']
      k_best = max(cands, key=lambda k: (w[start + j][k], -k))
      gene.append((ops[k_best], j))
    start += n
  return tuple(gene)


def test_derivation_matches_brute_force_on_random_alphas():
  rng = np.random.default_rng(0)
  for trial in range(200):
    w = rng.random((14, len(OPS)))
    if trial % 4 == 0:  # make 'none' the strongest op somewhere: it must be ignored
      w[:, 0] = 2.0
    if trial % 5 == 0:  # ties between edges and between ops
      w = np.round(w, 1)
    assert g.derive_cell(w, OPS) == brute_force_cell(w, OPS)


def test_derive_uses_both_cells_and_concat():
  rng = np.random.default_rng(1)
  wn, wr = rng.random((14, 8)), rng.random((14, 8))
  geno = g.derive(wn, wr, OPS)
  assert geno.normal == brute_force_cell(wn, OPS) and geno.reduce == brute_force_cell(wr, OPS)
  assert geno.normal_concat == geno.reduce_concat == (2, 3, 4, 5)


def test_json_round_trip(tmp_path):
  rng = np.random.default_rng(2)
  geno = g.derive(rng.random((14, 8)), rng.random((14, 8)), OPS)
  path = tmp_path / 'genotype.json'
  g.save(geno, path)
  text = path.read_text()
  assert '"schema_version": 1' in text and '"space": "darts"' in text
  assert g.load(path, OPS, space='darts') == geno


def _valid_json():
  return g.derive(np.eye(14, 8), np.eye(14, 8), OPS).to_json()


@pytest.mark.parametrize('mutate, message', [
    (lambda d: d.update(schema_version=99), 'schema_version is 99'),
    (lambda d: d.update(space='nb201'), "'nb201' search space"),
    (lambda d: d['normal'].__setitem__(0, ['conv_9x9', 0]), "unknown op 'conv_9x9'"),
    (lambda d: d['normal'].__setitem__(0, ['sep_conv_3x3', 5]), 'input state 5 is invalid'),
    (lambda d: d['reduce'].pop(), 'reduce cell has 7 edges'),
    (lambda d: d.pop('normal_concat'), "lacks field"),
    (lambda d: d.update(normal_concat=[2, 9]), 'normal_concat'),
    (lambda d: d['normal'].__setitem__(1, 'sep_conv_3x3'), 'each edge must be'),
])
def test_malformed_genotypes_are_refused_with_the_problem_named(tmp_path, mutate, message):
  d = _valid_json()
  mutate(d)
  path = tmp_path / 'bad.json'
  path.write_text(json.dumps(d))
  with pytest.raises(g.GenotypeError, match=message):
    g.load(path, OPS, space='darts')


def test_not_json_is_refused(tmp_path):
  path = tmp_path / 'bad.json'
  path.write_text('{"normal": [')
  with pytest.raises(g.GenotypeError, match='not valid JSON'):
    g.load(path, OPS, space='darts')
