"""Published genotypes load, validate and match their papers; lookup errors are clear."""
import json

import pytest

from dnas import genotype as genotype_lib
from dnas.cells import darts, known_genotypes


def test_the_five_published_cells_ship_with_their_papers():
  assert set(known_genotypes.names()) == {'DARTS_V1', 'DARTS_V2', 'PC_DARTS', 'P_DARTS',
                                          'DrNAS'}
  for name in known_genotypes.names():
    geno = known_genotypes.load(name)
    genotype_lib.validate(geno, darts.PRIMITIVES, space='darts')
    assert geno.normal_concat == geno.reduce_concat == (2, 3, 4, 5)
    source = known_genotypes.source(name)
    assert source['paper'] and source['url'].startswith('https://arxiv.org/abs/')
    assert 'params_millions' in source['reported']


def test_darts_v2_is_the_reference_cell():
  """As in quark0/darts cnn/genotypes.py (DARTS = DARTS_V2)."""
  geno = known_genotypes.load('DARTS_V2')
  assert geno.normal == (('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0),
                         ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0),
                         ('skip_connect', 0), ('dil_conv_3x3', 2))
  assert geno.reduce == (('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2),
                         ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2),
                         ('skip_connect', 2), ('max_pool_3x3', 1))


def test_names_are_case_and_dash_insensitive():
  assert known_genotypes.resolve('pc-darts') == known_genotypes.load('PC_DARTS')
  assert known_genotypes.resolve('drnas') == known_genotypes.load('DrNAS')


def test_a_path_resolves_to_the_file(tmp_path):
  geno = known_genotypes.load('P_DARTS')
  path = tmp_path / 'genotype.json'
  genotype_lib.save(geno, path)
  assert known_genotypes.resolve(str(path)) == geno


def test_unknown_name_lists_the_known_ones():
  with pytest.raises(genotype_lib.GenotypeError) as e:
    known_genotypes.resolve('DARTS_V3')
  msg = str(e.value)
  assert "unknown genotype 'DARTS_V3'" in msg
  assert 'DARTS_V1, DARTS_V2, DrNAS, PC_DARTS, P_DARTS' in msg and 'genotype.json' in msg


@pytest.mark.parametrize('edit, message', [
    (lambda o: o['normal'].__setitem__(0, ['conv_9x9', 0]), "normal[0]: unknown op 'conv_9x9'"),
    (lambda o: o['reduce'].__setitem__(6, ['max_pool_3x3', 7]),
     'reduce[6]: input state 7 is invalid for node 3'),
    (lambda o: o.pop('reduce_concat'), "lacks field(s) ['reduce_concat']"),
    (lambda o: o['normal'].pop(), 'normal cell has 7 edges'),
    (lambda o: o.__setitem__('space', 'nb201'), "for the 'nb201' search space"),
])
def test_malformed_genotype_file_is_one_clear_error(tmp_path, edit, message):
  obj = known_genotypes.load('DARTS_V2').to_json()
  edit(obj)
  path = tmp_path / 'bad.json'
  path.write_text(json.dumps(obj))
  with pytest.raises(genotype_lib.GenotypeError) as e:
    known_genotypes.resolve(str(path))
  assert message in str(e.value) and str(path) in str(e.value)
  assert '\n' not in str(e.value)


def test_not_json_names_the_file(tmp_path):
  path = tmp_path / 'genotype.json'
  path.write_text("Genotype(normal=[('sep_conv_3x3', 0)])")  # a pasted Python genotype
  with pytest.raises(genotype_lib.GenotypeError, match='is not valid JSON'):
    known_genotypes.resolve(str(path))
