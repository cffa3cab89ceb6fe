"""The search-space registry: names, config checks, NB201 genotype output."""
import json

import pytest
from flax import nnx

from dnas import nb201_string
from dnas.configs import default, nb201_default
from dnas.trainers import data, spaces


def test_unknown_space_lists_the_valid_ones():
  with pytest.raises(ValueError, match="unknown search space 'nasbench'; valid names: darts, nb201"):
    spaces.get('nasbench')


def test_each_default_config_passes_its_own_space_check_and_not_the_other():
  spaces.get('darts').check(default.get_config())
  spaces.get('nb201').check(nb201_default.get_config())
  c = default.get_config()
  c.model.space = 'nb201'
  with pytest.raises(ValueError, match=r"lacks field\(s\) \['cells_per_stage', "
                                       r"'track_running_stats'\].*configs/nb201_default.py"):
    spaces.get('nb201').check(c)


def test_nb201_refuses_regularizers():
  c = nb201_default.get_config()
  c.regularizers = ('beta_decay',)
  with pytest.raises(ValueError, match="apply to the DARTS space only"):
    spaces.get('nb201').check(c)


def test_nb201_builds_derives_and_writes_the_arch_string(tmp_path):
  c = nb201_default.get_config()
  c.model.channels, c.model.track_running_stats = 2, True
  space = spaces.get('nb201')
  model = space.build(c, data.get_spec('mnist5k'), 'softmax', seed=0)
  assert model.stem_w.shape == (3, 3, 1, 2)
  model.alphas[...] = model.alphas[...].at[:, 3].set(1.0)  # nor_conv_3x3 everywhere
  arch = space.derive(c, model)
  assert arch == nb201_string.format(['nor_conv_3x3'] * 6)
  assert set(space.op_weights(model)) == {'cell'} and space.op_weights(model)['cell'].shape == (6, 5)
  assert space.skips('|skip_connect~0|+|none~0|skip_connect~1|+|none~0|none~1|none~2|') == 2
  path = tmp_path / 'genotype.json'
  space.save(arch, path)
  assert json.loads(path.read_text())['arch'] == arch == nb201_string.load(path)
  assert 'running statistics' in space.describe(c)
  # Running statistics on: cell BNs hold state (3 sources x 2 conv ops x mean/var per cell).
  stats = nnx.state(model, nnx.BatchStat)
  assert len([1 for _ in nnx.to_flat_state(stats)]) == 12 + 3 * 12
