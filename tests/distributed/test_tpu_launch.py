"""launch/tpu.py: the gcloud commands its dry run prints, and that the command it sends the
workers runs the trainer with the intended arguments once a shell expands it."""
import os
import shlex
import stat
import subprocess
import sys

import pytest

pytestmark = pytest.mark.xdist_group('distributed')


def tpu(tmp_path, *args, path=None):
  env = dict(os.environ, TMPDIR=str(tmp_path))
  if path:
    env['PATH'] = f'{path}:{env["PATH"]}'
  return subprocess.run([sys.executable, '-m', 'dnas.launch.tpu', *args], capture_output=True,
                        text=True, env=env, timeout=120)


def commands(stdout):
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith('$ ')]


def remote(cmd):
  """The --command=... of a `gcloud ... ssh` line."""
  return next(a for a in cmd if a.startswith('--command=')).removeprefix('--command=')


def fake_bin(tmp_path, name, body):
  d = tmp_path / 'bin'
  d.mkdir(exist_ok=True)
  f = d / name
  f.write_text('#!/bin/bash\n' + body)
  f.chmod(f.stat().st_mode | stat.S_IEXEC)
  return str(d)


def test_single_host_v5e_dry_run_prints_every_step_and_runs_nothing(tmp_path):
  calls = tmp_path / 'gcloud_calls'
  gcloud = fake_bin(tmp_path, 'gcloud', f'echo "$@" >> {calls}\n')
  proc = tpu(tmp_path, '--tpu=dnas-v5e', '--zone=us-west4-a', '--accelerator_type=v5litepod-8',
             '--workdir=gs://bucket/dnas/run1', '--data_gcs=gs://bucket/tfds', '--dry_run',
             path=gcloud)
  assert proc.returncode == 0, proc.stderr
  assert '1 worker(s)' in proc.stdout
  cmds = commands(proc.stdout)
  assert cmds[0][:2] == ['git', '-C'] and cmds[0][3:4] == ['archive']
  create, scp, install, stage, run = cmds[1:]
  assert create[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create']
  assert {'dnas-v5e', '--accelerator-type=v5litepod-8', '--version=v2-alpha-tpuv5-lite',
          '--zone=us-west4-a'} <= set(create) and '--spot' not in create
  assert scp[4] == 'scp' and '--worker=all' in scp
  for cmd in (install, stage, run):
    assert cmd[4] == 'ssh' and '--worker=all' in cmd
  assert '"jax[tpu]"' in remote(install) and 'gcsfs' in remote(install)
  assert 'gcloud storage cp -r gs://bucket/tfds/cifar10' in remote(stage)
  assert '--multihost' not in remote(run)
  assert not calls.exists()  # nothing ran
  assert not (tmp_path / 'dnas-src.tar.gz').exists()


def test_multi_host_v4_slice_runs_the_same_command_on_all_workers(tmp_path):
  proc = tpu(tmp_path, '--tpu=dnas-v4', '--zone=us-central2-b', '--accelerator_type=v4-32',
             '--workdir=gs://bucket/dnas/run2', '--spot', '--action=all', '--dry_run', '--',
             '--config.epochs=25', "--config.regularizers=('beta_decay',)")
  assert proc.returncode == 0, proc.stderr
  assert '4 worker(s), multi-host run' in proc.stdout
  cmds = commands(proc.stdout)
  assert '--spot' in cmds[1] and '--version=tpu-ubuntu2204-base' in cmds[1]
  assert not any('storage cp' in remote(c) for c in cmds if c[4:5] == ['ssh'])  # mnist5k
  # The worker's shell expands the command: a fake dnas-search records what it received.
  home = tmp_path / 'home'
  bin_dir = home / '.local' / 'bin'
  bin_dir.mkdir(parents=True)
  got = tmp_path / 'argv'
  trainer = bin_dir / 'dnas-search'
  trainer.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {got}\n')
  trainer.chmod(0o755)
  env = {'HOME': str(home), 'PATH': '/usr/bin:/bin'}
  subprocess.run(['bash', '-c', remote(cmds[-1])], env=env, check=True, timeout=60)
  assert got.read_text().splitlines() == [
      f'--config={home}/dnas-src/configs/cifar10_darts.py', '--workdir=gs://bucket/dnas/run2',
      f'--config.data_dir={home}/tensorflow_datasets', '--multihost', '--config.epochs=25',
      "--config.regularizers=('beta_decay',)"]


def test_run_action_executes_what_it_prints(tmp_path):
  calls = tmp_path / 'gcloud_calls'
  gcloud = fake_bin(tmp_path, 'gcloud', f'printf "%s\\n" "$@" > {calls}\n')
  proc = tpu(tmp_path, '--tpu=t', '--zone=z', '--workdir=gs://b/w', '--action=run',
             '--trainer=retrain', '--config=configs/retrain_cifar10_darts.py', '--detach',
             path=gcloud)
  assert proc.returncode == 0, proc.stderr
  (printed,) = commands(proc.stdout)
  assert ['gcloud', *calls.read_text().splitlines()] == printed
  assert 'nohup dnas-retrain' in remote(printed) and '~/dnas-retrain.log' in remote(printed)


@pytest.mark.parametrize('args, message', [
    (['--workdir=/tmp/local'], 'use a gs:// path'),
    (['--workdir=gs://b/w', '--accelerator_type=v9-8'], "unknown accelerator type 'v9-8'"),
    ([], 'missing --workdir'),
])
def test_bad_flags_are_one_clear_error(tmp_path, args, message):
  proc = tpu(tmp_path, '--tpu=t', '--zone=z', '--dry_run', *args)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr
