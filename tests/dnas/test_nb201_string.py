"""NAS-Bench-201 arch strings: round trip over the whole space, derivation, bad input."""
import json

import numpy as np
import pytest

from dnas import nb201_string as s

OPS = s.OPS


def test_round_trip_on_all_15625_architectures():
  archs = s.all_archs()
  assert len(archs) == 5 ** 6 == 15625 and len(set(archs)) == 15625
  for arch in archs:
    ops = s.parse(arch)
    assert s.format(ops) == arch
  # Enumeration order: edge 1<-0 slowest, 3<-2 fastest (AutoDL-Projects' gen_all).
  assert archs[0] == '|none~0|+|none~0|none~1|+|none~0|none~1|none~2|'
  assert archs[1] == '|none~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|'
  assert archs[-1] == ('|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+'
                       '|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|')


def test_parse_places_ops_on_the_reference_edges():
  # Edge order 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2 (sorted '{i}<-{j}' keys of the reference).
  arch = '|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|'
  assert s.parse(arch) == ('nor_conv_3x3', 'nor_conv_1x1', 'avg_pool_3x3', 'skip_connect', 'none',
                           'nor_conv_3x3')
  # Inputs of a node may be listed in any order; the formatted string is canonical.
  shuffled = '|nor_conv_3x3~0|+|avg_pool_3x3~1|nor_conv_1x1~0|+|nor_conv_3x3~2|skip_connect~0|none~1|'
  assert s.format(s.parse(shuffled)) == arch


def test_derive_takes_the_argmax_over_all_ops_including_none():
  w = np.full((6, 5), 0.1)
  expected = []
  for e, k in enumerate([0, 3, 2, 1, 4, 0]):
    w[e, k] = 0.6
    expected.append(OPS[k])
  assert s.derive(w) == s.format(expected)
  assert s.parse(s.derive(w))[0] == 'none'
  with pytest.raises(s.ArchStringError, match=r'shape \(14, 8\); NB201 needs \(6, 5\)'):
    s.derive(np.zeros((14, 8)))


@pytest.mark.parametrize('bad, message', [
    (123, 'must be a str, got int'),
    ('|none~0|+|none~0|none~1|', "has 2 node group(s) separated by '+'; NAS-Bench-201 needs 3"),
    ('none~0|+|none~0|none~1|+|none~0|none~1|none~2|', "must start and end with '|'"),
    ('|none~0|+|none~0|+|none~0|none~1|none~2|', 'node 2 of arch string'),
    ('|none~0|+|none~0|none~1|+|none~0|none~1|', 'has 2 input(s)'),
    ('|none~0|+|none~0|none~1|+|none~0|none~1|sep_conv_3x3~2|',
     "unknown NAS-Bench-201 op 'sep_conv_3x3'; valid ops: none, skip_connect"),
    ('|none~0|+|none~0|none~2|+|none~0|none~1|none~2|', 'input 2 is not an earlier node'),
    ('|none~0|+|none~0|none~0|+|none~0|none~1|none~2|', 'lists input 0 twice'),
    ('|none0|+|none~0|none~1|+|none~0|none~1|none~2|', "is not 'op~input'"),
    ('|none~x|+|none~0|none~1|+|none~0|none~1|none~2|', "is not 'op~input'"),
    ('|none~00|+|none~0|none~1|+|none~0|none~1|none~2|', "is not 'op~input'"),
    (' |none~0|+|none~0|none~1|+|none~0|none~1|none~2|', "must start and end with '|'"),
])
def test_bad_strings_are_rejected_naming_the_problem(bad, message):
  with pytest.raises(s.ArchStringError) as e:
    s.parse(bad)
  assert message in str(e.value)


def test_format_rejects_bad_op_lists():
  with pytest.raises(s.ArchStringError, match='has 6 edge ops'):
    s.format(('none',) * 5)
  with pytest.raises(s.ArchStringError, match=r"unknown NAS-Bench-201 op\(s\) \['conv'\]"):
    s.format(('none',) * 5 + ('conv',))


def test_json_round_trip_and_errors(tmp_path):
  arch = s.all_archs()[4321]
  path = tmp_path / 'genotype.json'
  s.save(arch, path)
  obj = json.loads(path.read_text())
  assert obj == {'schema_version': 1, 'space': 'nb201', 'arch': arch}
  assert s.load(path) == arch
  path.write_text(json.dumps({'schema_version': 1, 'space': 'darts', 'normal': []}))
  with pytest.raises(s.ArchStringError, match="for the 'darts' search space"):
    s.load(path)
  path.write_text(json.dumps({'schema_version': 1, 'space': 'nb201', 'arch': '|x~0|'}))
  with pytest.raises(s.ArchStringError, match='node group'):
    s.load(path)
  with pytest.raises(s.ArchStringError, match='does not exist'):
    s.load(tmp_path / 'missing.json')
