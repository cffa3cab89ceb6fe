"""dnas on a Cloud TPU VM: create it, install dnas on every worker, run the same
dnas-search (or dnas-retrain) on all of them, delete it.

    python -m dnas.launch.tpu --tpu=dnas-v5e --zone=us-west4-a \\
        --accelerator_type=v5litepod-8 --workdir=gs://MY_BUCKET/dnas/cifar10_darts \\
        --data_gcs=gs://MY_BUCKET/tensorflow_datasets --config=configs/cifar10_darts.py \\
        --action=all --dry_run

`--dry_run` prints the gcloud commands instead of running them. Actions: create (the VM,
`--spot` for a preemptible one), install (this checkout's committed source + jax[tpu] on
every worker), stage (copies the prepared TFDS dataset from `--data_gcs` to each worker's
local disk: array_record is read from local files only), run (the trainer on every worker
at once, `--multihost` on a slice of several hosts), all (those four), delete.

The workdir is on GCS: every worker writes its part of each orbax checkpoint there and
process 0 the metrics, alpha history and genotype. A preempted run is resumed by the same
`--action=all` (a new VM, the same workdir: the trainer continues from its last checkpoint).
Trailing arguments after `--` go to the trainer, e.g. `-- --config.epochs=25`.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_TPU = flags.DEFINE_string('tpu', None, 'TPU VM name.')
_ZONE = flags.DEFINE_string('zone', None, 'Zone, e.g. us-west4-a (v5e), us-central2-b (v4).')
_PROJECT = flags.DEFINE_string('project', '', 'GCP project (default: gcloud\'s).')
_ACCEL = flags.DEFINE_string('accelerator_type', 'v5litepod-8',
                             'e.g. v5litepod-8 (one host), v5litepod-32, v4-32 (several).')
_VERSION = flags.DEFINE_string('version', '', 'TPU software version (default: by generation).')
_SPOT = flags.DEFINE_bool('spot', False, 'Spot (preemptible) VM: cheaper, may be preempted.')
_ACTION = flags.DEFINE_enum('action', 'all',
                            ['create', 'install', 'stage', 'run', 'all', 'delete'],
                            'What to do.')
_TRAINER = flags.DEFINE_enum('trainer', 'search', ['search', 'retrain'],
                             'dnas-search or dnas-retrain.')
_CONFIG = flags.DEFINE_string('config', 'configs/cifar10_darts.py',
                              'Config file, relative to the dnas checkout (or absolute on the '
                              'workers).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'gs://bucket/path for checkpoints and results.')
_DATA_GCS = flags.DEFINE_string('data_gcs', '',
                                'gs:// folder holding the prepared TFDS dataset folder(s) '
                                '(e.g. gs://b/tensorflow_datasets with cifar10/ in it); '
                                'empty: mnist5k, built on each worker.')
_DATA_DIR = flags.DEFINE_string('data_dir', '~/tensorflow_datasets',
                                'Local data dir on each worker.')
_DATASET = flags.DEFINE_string('dataset', 'cifar10', 'TFDS folder to stage from --data_gcs.')
_DETACH = flags.DEFINE_bool('detach', False, 'Run in the background on the workers (nohup, '
                            'log in ~/dnas-<trainer>.log) instead of streaming the output.')
_SOURCE = flags.DEFINE_string('source', ROOT, 'The dnas git checkout to install (its HEAD).')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the commands, run nothing.')

REMOTE_SRC = 'dnas-src'


def remote_path(path: str) -> str:
  """A worker's path for its shell: ~/x as "$HOME/x" (expanded even after '='), else quoted."""
  if path.startswith('~/'):
    return f'"$HOME/{path[2:]}"'
  return shlex.quote(path)


def software_version(accelerator_type: str) -> str:
  """The TPU VM image for a generation (cloud.google.com/tpu/docs/runtimes)."""
  generation = accelerator_type.split('-')[0]
  versions = {'v5litepod': 'v2-alpha-tpuv5-lite', 'v5p': 'v2-alpha-tpuv5',
              'v6e': 'v2-alpha-tpuv6e', 'v4': 'tpu-ubuntu2204-base',
              'v3': 'tpu-ubuntu2204-base', 'v2': 'tpu-ubuntu2204-base'}
  if generation not in versions:
    raise ValueError(f'unknown accelerator type {accelerator_type!r}; expected e.g. '
                     'v5litepod-8, v5litepod-32, v4-32, v5p-16, v6e-8 (or pass --version)')
  return versions[generation]


def num_hosts(accelerator_type: str) -> int:
  """Workers (VM hosts) of a slice. v4/v5p count TensorCores (2 per chip, 4 chips a host);
  v5e/v6e count chips (up to 8 on one host, 4 a host beyond); v2/v3 8 cores a host."""
  m = re.fullmatch(r'(v5litepod|v6e|v5p|v4|v3|v2)-(\d+)', accelerator_type)
  if not m:
    raise ValueError(f'cannot read the slice size from {accelerator_type!r}; expected e.g. '
                     'v5litepod-8 or v4-32')
  generation, n = m.group(1), int(m.group(2))
  if generation in ('v5litepod', 'v6e'):
    return 1 if n <= 8 else n // 4
  return max(1, n // 8)  # v4, v5p: 8 TensorCores a host; v2, v3: 8 cores a host


def gcloud_tpu(verb: str, *args: str) -> list[str]:
  cmd = ['gcloud', 'compute', 'tpus', 'tpu-vm', verb, *args, f'--zone={_ZONE.value}']
  if _PROJECT.value:
    cmd.append(f'--project={_PROJECT.value}')
  return cmd


def on_all_workers(script: str) -> list[str]:
  return gcloud_tpu('ssh', _TPU.value, '--worker=all', f'--command={script}')


def create() -> list[list[str]]:
  version = _VERSION.value or software_version(_ACCEL.value)
  cmd = gcloud_tpu('create', _TPU.value, f'--accelerator-type={_ACCEL.value}',
                   f'--version={version}')
  if _SPOT.value:
    cmd.append('--spot')
  return [cmd]


def install(archive: str) -> list[list[str]]:
  """This checkout's committed tree to every worker, then dnas and jax[tpu]. gcsfs and
  google-cloud-storage let etils.epath and tensorboardX write gs:// paths."""
  script = ' && '.join([
      f'rm -rf ~/{REMOTE_SRC} && mkdir -p ~/{REMOTE_SRC}',
      f'tar xzf ~/{os.path.basename(archive)} -C ~/{REMOTE_SRC}',
      'python3 -m pip install -q -U pip',
      f'python3 -m pip install -q -U "jax[tpu]" "$HOME/{REMOTE_SRC}[mnist]" gcsfs '
      'google-cloud-storage',
  ])
  return [gcloud_tpu('scp', archive, f'{_TPU.value}:~/', '--worker=all'),
          on_all_workers(script)]


def stage() -> list[list[str]]:
  if not _DATA_GCS.value:
    return []
  src = f'{_DATA_GCS.value.rstrip("/")}/{_DATASET.value}'
  local = remote_path(_DATA_DIR.value.rstrip('/') + '/')
  return [on_all_workers(f'mkdir -p {local} && gcloud storage cp -r {shlex.quote(src)} {local}')]


def run(extra: list[str]) -> list[list[str]]:
  """The same trainer command on every worker; `--multihost` on a slice of several hosts."""
  config = remote_path(_CONFIG.value if os.path.isabs(_CONFIG.value)
                       else f'~/{REMOTE_SRC}/{_CONFIG.value}')
  args = [f'dnas-{_TRAINER.value}', f'--config={config}',
          shlex.quote(f'--workdir={_WORKDIR.value}'),
          f'--config.data_dir={remote_path(_DATA_DIR.value)}']
  if num_hosts(_ACCEL.value) > 1:
    args.append('--multihost')  # jax.distributed.initialize() finds the other workers
  command = ' '.join(args + [shlex.quote(a) for a in extra])
  if _DETACH.value:
    command = f'nohup {command} < /dev/null > ~/dnas-{_TRAINER.value}.log 2>&1 &'
  return [on_all_workers(f'export PATH="$HOME/.local/bin:$PATH" && {command}')]


def delete() -> list[list[str]]:
  return [gcloud_tpu('delete', _TPU.value, '--quiet')]


def check_flags() -> None:
  missing = [f'--{f.name}' for f in (_TPU, _ZONE) if not f.value]
  if _ACTION.value in ('run', 'all') and not _WORKDIR.value:
    missing.append('--workdir')
  if missing:
    raise app.UsageError(f'missing {", ".join(missing)}')
  if _WORKDIR.value and not _WORKDIR.value.startswith('gs://'):
    raise app.UsageError(f'--workdir={_WORKDIR.value}: use a gs:// path. Every worker writes '
                         'its part of each checkpoint there, and a resumed run (on a new VM '
                         'after a preemption) reads it back')
  if _ACTION.value in ('install', 'all') and not os.path.exists(
      os.path.join(_SOURCE.value, '.git')):
    raise app.UsageError(f'--source={_SOURCE.value} is not a git checkout of dnas: pass '
                         '--source=/path/to/dnas (its committed HEAD is installed)')
  if _DATA_GCS.value and not _DATA_GCS.value.startswith('gs://'):
    raise app.UsageError(f'--data_gcs={_DATA_GCS.value}: expected a gs:// folder')
  try:
    if not _VERSION.value:
      software_version(_ACCEL.value)
    num_hosts(_ACCEL.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None


def plan(extra: list[str], archive: str) -> list[list[str]]:
  action = _ACTION.value
  steps = {'create': create, 'install': lambda: install(archive), 'stage': stage,
           'run': lambda: run(extra), 'delete': delete}
  order = ['create', 'install', 'stage', 'run'] if action == 'all' else [action]
  return [cmd for name in order for cmd in steps[name]()]


def source_archive(path: str, dry_run: bool) -> None:
  """The committed tree of this checkout (`git archive HEAD`): what runs is what is in git."""
  cmd = ['git', '-C', _SOURCE.value, 'archive', '--format=tar.gz', '-o', path, 'HEAD']
  print('$ ' + shlex.join(cmd), flush=True)
  if not dry_run:
    subprocess.run(cmd, check=True)


def main(argv):
  extra = argv[1:]
  check_flags()
  archive = os.path.join(tempfile.gettempdir(), 'dnas-src.tar.gz')
  hosts = num_hosts(_ACCEL.value)
  print(f'# {_ACCEL.value}: {hosts} worker(s){", multi-host run" if hosts > 1 else ""}; '
        f'workdir {_WORKDIR.value}', flush=True)
  if _ACTION.value in ('install', 'all'):
    source_archive(archive, _DRY_RUN.value)
  for cmd in plan(extra, archive):
    print('$ ' + shlex.join(cmd), flush=True)
    if not _DRY_RUN.value:
      rc = subprocess.run(cmd).returncode
      if rc:
        print(f'dnas-tpu: error: the command above exited with status {rc}', file=sys.stderr)
        sys.exit(rc)


def run_main():
  app.run(main)


if __name__ == '__main__':
  run_main()
