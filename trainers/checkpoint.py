"""Orbax checkpoints of the search state, with the guards a restartable run needs.

* The same command on the same workdir resumes from the newest readable checkpoint.
* A checkpoint that cannot be read (corrupt, partial) is skipped with a warning in favour of
  the previous one and renamed '<step>.unreadable' (so the resumed run can write that step
  again); nothing is deleted.
* A workdir that holds another experiment (different data, model, relaxation, seed or batch
  size) is refused with a message naming the differing fields, before anything is written.
* SIGTERM (a preemption notice, `kill`, a scheduler's stop) ends the run at the next step
  boundary with a checkpoint of that step (`Preemption`).
* Paths may be local or remote (gs://): files go through etils.epath, arrays through orbax.
  Several processes save and restore collectively; only process 0 writes the small files.
"""
import json
import os
import signal
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

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


def resolve(path: str) -> str:
  """A local path made absolute (~ expanded); a remote one (gs://...) as given."""
  path = os.fspath(path)
  return path if '://' in path else os.path.abspath(os.path.expanduser(path))


def write_text(path: str, text: str) -> None:
  """Writes a small file whole: local ones via a renamed temporary (a reader never sees half
  a file), remote ones in one object write (atomic on GCS)."""
  path = epath.Path(path)
  if '://' in os.fspath(path):
    path.write_text(text)
    return
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(text)
  os.replace(tmp, path)


def save_via_local(save, path: str) -> None:
  """`save(local_path)` (a writer that knows only local files), then that file to `path`."""
  if '://' not in path:
    save(path)
    return
  import tempfile
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, os.path.basename(path))
    save(local)
    epath.Path(path).write_bytes(epath.Path(local).read_bytes())


def claim_workdir(workdir: str, identity: dict) -> None:
  """Records which experiment owns `workdir`, or refuses if another one does. Every process
  checks; process 0 writes (others may or may not see its file yet: the same either way)."""
  path = epath.Path(workdir) / EXPERIMENT_FILE
  identity = _flatten(identity)
  if path.exists():
    owner = json.loads(path.read_text())
    diff = sorted(k for k in set(owner) | set(identity) if owner.get(k) != identity.get(k))
    if diff:
      details = ', '.join(f'{k}: {owner.get(k)!r} -> {identity.get(k)!r}' for k in diff)
      raise WorkdirMismatchError(
          f'{workdir} holds another experiment\'s checkpoints ({details}); use a new --workdir '
          f'(or pass the original config to resume that experiment)')
    return
  if jax.process_index() == 0:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    write_text(os.fspath(path), json.dumps(identity, indent=2))


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` (atomic saves, keeps the newest N)."""

  def __init__(self, directory: str, *, keep: int):
    self.directory = resolve(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def restore_latest(self, target: Any, sharding: jax.sharding.Sharding | None = None):
    """(state, step) of the newest readable checkpoint, or (None, None) if there is none.

    `sharding` (e.g. replicated over the data mesh): every array is restored with it, on
    every process, so the state goes back onto the devices exactly as a fresh one; the
    trainers' jitted steps name the same sharding, so the step compiled before the
    interruption is reused. None: uncommitted arrays (like a fresh unsharded state's)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    if sharding is not None:
      abstract = jax.tree.map(
          lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract)
    unreadable = []
    try:
      for step in sorted(self.manager.all_steps(), reverse=True):
        try:
          state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint: try an older one
          logging.warning('checkpoint %d in %s is unreadable (%s: %s); trying an older one',
                          step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
          if jax.process_index() == 0:
            print(f'WARNING: checkpoint {step} in {self.directory} is unreadable '
                  f'({type(e).__name__}); falling back to an older one', flush=True)
          unreadable.append(step)
          continue
        if sharding is not None:
          return state, step
        # orbax returns device-committed arrays, whose sharding annotations change the
        # lowered step and miss the persistent compilation cache; uncommitted copies (like a
        # fresh state's) let a resumed run reuse the step compiled before the interruption.
        return jax.tree.map(lambda r: jax.device_put(np.asarray(r)), state), step
      return None, None
    finally:
      if unreadable:
        self._set_aside(unreadable)

  def _set_aside(self, steps) -> None:
    """Renames unreadable steps to '<step>.unreadable' (kept for a post-mortem, invisible to
    orbax), so the resumed run can save those steps again."""
    if jax.process_index() == 0:
      for step in steps:
        path = epath.Path(self.directory) / str(step)
        aside = path.with_name(f'{step}.unreadable')
        n = 1
        while aside.exists():
          aside, n = path.with_name(f'{step}.unreadable.{n}'), n + 1
        path.rename(aside)
        print(f'WARNING: moved the unreadable checkpoint {step} to {aside}', flush=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices('dnas_checkpoints_set_aside')
    self.manager.reload()

  def save(self, step: int, state: Any) -> None:
    """Saves now (asynchronously); the caller decides when (every N steps and at the end)."""
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def latest_step(self):
    return self.manager.latest_step()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


class Preempted(Exception):
  """The run stopped on SIGTERM after saving a checkpoint; the same command resumes it."""

  exit_code = 128 + signal.SIGTERM  # 143, a shell's status for a process ended by SIGTERM


class Preemption:
  """SIGTERM -> stop at the next step boundary, every process at the same step.

  One process: a Python handler sets a flag that the loop reads between steps (the step in
  flight finishes; nothing is interrupted mid-write). Several processes: the save is
  collective, so all must agree on the step; JAX's coordination service already catches
  SIGTERM (and, on Cloud TPU, maintenance notices) and `reached_preemption_sync_point`
  returns True on every process at the same step, so no Python handler is installed there
  (it would replace the service's)."""

  def __init__(self):
    self.multiprocess = jax.process_count() > 1
    self.received = False
    self._previous = None
    if not self.multiprocess:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread (an embedding app): it keeps its own handling
        logging.warning('SIGTERM handler not installed (not in the main thread)')

  def _handle(self, signum, frame):  # noqa: ARG002
    self.received = True

  def reached(self, step: int) -> bool:
    """Called by every process after each step; True: save `step` and stop."""
    if self.multiprocess:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
