"""Orbax checkpoints of the search state, with the guards a restartable run needs.

* The same command on the same workdir resumes from the newest readable checkpoint.
* A checkpoint that cannot be read (corrupt, partial) is skipped with a warning in favour of
  the previous one; nothing is deleted.
* A workdir that holds another experiment (different data, model, relaxation, seed or batch
  size) is refused with a message naming the differing fields, before anything is written.
"""
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

EXPERIMENT_FILE = 'experiment.json'


class WorkdirMismatchError(RuntimeError):
  """The workdir belongs to a different experiment."""


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
  return out


def claim_workdir(workdir: str, identity: dict) -> None:
  """Records which experiment owns `workdir`, or refuses if another one does."""
  path = os.path.join(workdir, EXPERIMENT_FILE)
  identity = _flatten(identity)
  if os.path.exists(path):
    with open(path) as f:
      owner = json.load(f)
    diff = sorted(k for k in set(owner) | set(identity) if owner.get(k) != identity.get(k))
    if diff:
      details = ', '.join(f'{k}: {owner.get(k)!r} -> {identity.get(k)!r}' for k in diff)
      raise WorkdirMismatchError(
          f'{workdir} holds another experiment\'s checkpoints ({details}); use a new --workdir '
          f'(or pass the original config to resume that experiment)')
    return
  os.makedirs(workdir, exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(identity, f, indent=2)
  os.replace(path + '.tmp', path)


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` (atomic saves, keeps the newest N)."""

  def __init__(self, directory: str, *, keep: int):
    self.directory = os.path.abspath(os.path.expanduser(directory))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def restore_latest(self, target: Any):
    """(state, step) of the newest readable checkpoint, or (None, None) if there is none."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        # orbax returns device-committed arrays, whose sharding annotations change the
        # lowered step and miss the persistent compilation cache; uncommitted copies (like a
        # fresh state's) let a resumed run reuse the step compiled before the interruption.
        return jax.tree.map(lambda r: jax.device_put(np.asarray(r)), state), step
      except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint: try an older one
        logging.warning('checkpoint %d in %s is unreadable (%s: %s); trying an older one',
                        step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
        print(f'WARNING: checkpoint {step} in {self.directory} is unreadable '
              f'({type(e).__name__}); falling back to an older one', flush=True)
    return None, None

  def save(self, step: int, state: Any) -> None:
    """Saves now (asynchronously); the caller decides when (every N steps and at the end)."""
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def latest_step(self):
    return self.manager.latest_step()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
