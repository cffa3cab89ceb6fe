"""Regularizers through dnas-search's command line, on the real offline data (tiny network).

One search combines beta-DARTS's loss term, DARTS-'s auxiliary skip and DARTS+'s early
stopping (alphas frozen by a zero architecture lr, so the ranking is stable and criterion 2
fires deterministically after 2 epochs of 3): the run ends cleanly with a checkpoint, a
genotype, the rule named; the terms are in TensorBoard; rerunning does not train on. A bad
regularizer name or argument is one clear line.
"""
import glob
import json
import os
import struct

import pytest
from tensorboardX.proto import event_pb2

from dnas import genotype
from dnas.cells import darts

from test_search_cli import run_search  # tests/launch/test_search_cli.py

pytestmark = pytest.mark.xdist_group('regularizer_cli')

REGS = ['--config.regularizers=("beta_decay", "darts_minus", "darts_plus")',
        '--config.regularizer_args.darts_plus.stable_epochs=1',
        '--config.optim.arch_lr=0.0', '--config.epochs=3', '--config.model.layers=1']


def scalars(tb_dir) -> dict[str, list[float]]:
  """tag -> values, read from the TFRecord event files (length, crc, event, crc)."""
  out = {}
  for path in sorted(glob.glob(os.path.join(tb_dir, 'events.out.tfevents*'))):
    data = open(path, 'rb').read()
    i = 0
    while i < len(data):
      (n,) = struct.unpack('<Q', data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        out.setdefault(v.tag, []).append(v.simple_value)
  return out


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('reg_cli_cache'))


def test_combined_regularizers_stop_early_cleanly_and_log_their_terms(tmp_path, tfds_dir, cache):
  workdir = str(tmp_path / 'w')
  # All 8 ops (ops=None): with run_search's 4 there is one learnable op, nothing for
  # DARTS+'s criterion 2 to rank.
  proc = run_search(workdir, tfds_dir, cache, *REGS, ops=None)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout + proc.stderr
  assert 'regularizers: beta_decay, darts_minus, darts_plus' in out
  assert 'early stop at epoch 2 (step 4): darts_plus' in out and 'criterion 2' in out
  assert 'search stopped early by darts_plus at step 4 of 6' in out
  result = json.load(open(os.path.join(workdir, 'result.json')))
  assert result['steps'] == 4 and result['early_stop']['rule'] == 'darts_plus'
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '4'))
  genotype.load(os.path.join(workdir, 'genotype.json'), darts.PRIMITIVES, space='darts')
  history = [json.loads(l) for l in open(os.path.join(workdir, 'alphas.jsonl'))]
  assert [h['step'] for h in history] == [2, 4]
  assert all('normal_cell_skips' in h and 'normal_cell_parameter_free' in h for h in history)

  logged = scalars(os.path.join(workdir, 'tb'))
  tags = set(logged)
  assert {'search/regularizer_loss/beta_decay', 'regularizers/beta_decay/lambda',
          'regularizers/darts_minus/beta', 'search/normal_cell_skips'} <= tags, tags
  beta = logged['regularizers/darts_minus/beta']
  assert beta[0] == 1.0 and beta[-1] == pytest.approx(2 / 3)  # 1 - epoch / 3, per epoch
  lam = logged['search/regularizer_loss/beta_decay']
  assert lam[0] == 0.0 and lam[-1] > 0  # lambda is 0 in epoch 0, then grows

  # Rerunning the stopped search trains no further.
  again = run_search(workdir, tfds_dir, cache, *REGS, ops=None)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'early stop (already met at step 4): darts_plus' in again.stdout
  assert json.load(open(os.path.join(workdir, 'result.json')))['steps'] == 4


@pytest.mark.parametrize('overrides, message', [
    (['--config.regularizers=("beta_decay", "sdart_rs")'],
     "unknown regularizer 'sdart_rs'; valid names: beta_decay, darts_minus"),
    (['--config.regularizers=("zero_one",)'], '--config.relaxation=sigmoid'),
])
def test_bad_regularizer_is_one_clear_error(tmp_path, tfds_dir, cache, overrides, message):
  proc = run_search(str(tmp_path / 'w'), tfds_dir, cache, *overrides)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
