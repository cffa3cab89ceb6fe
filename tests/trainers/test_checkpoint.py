"""Checkpoint guards: fallback past a corrupt checkpoint, and workdir ownership."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from dnas.trainers import checkpoint


def _state(v):
  return {'w': jnp.full((3, 4), v, jnp.float32), 'step': jnp.asarray(int(v), jnp.int32)}


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), keep=3)
  ckpt.save(1, _state(1.0))
  ckpt.save(2, _state(2.0))
  ckpt.close()
  # Corrupt every data file of step 2 (a partial write or a bad disk looks like this).
  for root, _, files in os.walk(tmp_path / 'ckpt' / '2'):
    for f in files:
      with open(os.path.join(root, f), 'wb') as fh:
        fh.write(b'garbage')
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), keep=3)
  state, step = ckpt.restore_latest(_state(0.0))
  assert step == 1
  np.testing.assert_array_equal(state['w'], np.full((3, 4), 1.0))
  assert 'checkpoint 2' in capsys.readouterr().out
  assert os.path.isdir(tmp_path / 'ckpt' / '2.unreadable')  # set aside, nothing deleted
  # The resumed run reaches step 2 again and can save it (orbax refuses an existing step).
  ckpt.save(2, _state(22.0))
  ckpt.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), keep=3)
  state, step = ckpt.restore_latest(_state(0.0))
  assert step == 2
  np.testing.assert_array_equal(state['w'], np.full((3, 4), 22.0))


def test_empty_directory_restores_nothing(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), keep=3)
  assert ckpt.restore_latest(_state(0.0)) == (None, None)


def test_workdir_claimed_by_another_experiment_is_refused(tmp_path):
  checkpoint.claim_workdir(str(tmp_path), {'model': {'channels': 8}, 'seed': 1})
  checkpoint.claim_workdir(str(tmp_path), {'model': {'channels': 8}, 'seed': 1})  # same: fine
  with pytest.raises(checkpoint.WorkdirMismatchError, match=r'model.channels: 8 -> 16'):
    checkpoint.claim_workdir(str(tmp_path), {'model': {'channels': 16}, 'seed': 1})
