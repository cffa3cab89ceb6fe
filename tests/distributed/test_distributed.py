"""One CPU, 8 devices, 2 processes, and a search killed and resumed: the same numbers.

Every run is `dnas-search` in a subprocess on a tiny search (one cell, C=4, three ops, batch
16, a checkpoint every step), so device counts and processes never leak into other tests.
The reference is one uninterrupted run on 1 CPU device (12 steps); its checkpoints are what
the others are compared with:
* 8 fake CPU devices (JAX_NUM_CPU_DEVICES=8, the global batch split 8 ways): the same state
  after each of 3 steps within float tolerance (the all-reduced sums add in another order);
* 2 processes of 2 CPU devices joined by jax.distributed (each reading its half of every
  global batch): the same within float tolerance, process 0 alone printing and writing;
* the same command killed (SIGKILL) at random points, once stopped by SIGTERM, once with its
  newest checkpoint corrupted, and rerun until it finishes: bitwise the reference's final
  state, alpha history and genotype.
"""
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

# One worker runs this module (pytest -n 2 --dist loadgroup): the runs share the reference
# and its XLA cache.
pytestmark = pytest.mark.xdist_group('distributed')

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, 'configs', 'default.py')
STEPS = 12
TINY = ['--config.model.layers=1', '--config.model.channels=4', '--config.batch_size=16',
        "--config.model.primitives=('max_pool_3x3','skip_connect','sep_conv_3x3')",
        '--config.epochs=1', '--config.log_every_steps=1', '--config.checkpoint_every_steps=1',
        '--config.keep_checkpoints=100']


def search_cmd(workdir, tfds_dir, cache_dir, steps, *extra):
  return [sys.executable, '-m', 'dnas.launch.search', f'--config={CONFIG}',
          f'--workdir={workdir}', f'--compilation_cache_dir={cache_dir}',
          f'--config.data_dir={tfds_dir}', f'--config.steps_per_epoch={steps}', *TINY, *extra]


def env(devices: int = 1):
  return dict(os.environ, TQDM_DISABLE='1', JAX_NUM_CPU_DEVICES=str(devices),
              JAX_PLATFORMS='cpu')


def load(workdir, step):
  """A checkpoint's arrays as numpy, whatever device layout wrote it."""
  path = os.path.join(workdir, 'checkpoints', str(step), 'default')
  ckptr = ocp.StandardCheckpointer()
  meta = ckptr.metadata(path)
  meta = getattr(meta, 'item_metadata', meta)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          meta)
  return jax.tree.map(np.asarray, ckptr.restore(path, abstract))


def committed_steps(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def assert_close(a, b, rtol=1e-4, atol=1e-5):
  paths_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
  paths_b, tree_b = jax.tree_util.tree_flatten_with_path(b)
  assert tree_a == tree_b
  for (path, x), (_, y) in zip(paths_a, paths_b):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def assert_bitwise(a, b):
  paths_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
  assert tree_a == jax.tree.structure(b)
  for (path, x), y in zip(paths_a, jax.tree.leaves(b)):
    assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), jax.tree_util.keystr(path)


@pytest.fixture(scope='module')
def reference(tmp_path_factory, tfds_dir, cache_dir):
  workdir = str(tmp_path_factory.mktemp('reference'))
  proc = subprocess.run(search_cmd(workdir, tfds_dir, cache_dir, STEPS), capture_output=True,
                        text=True, env=env(1), timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert ', 1 device' in proc.stdout
  assert committed_steps(workdir) == list(range(1, STEPS + 1))
  return workdir


def test_eight_devices_match_one_device(reference, tfds_dir, tmp_path):
  workdir = str(tmp_path / 'eight')
  proc = subprocess.run(search_cmd(workdir, tfds_dir, '', 3), capture_output=True, text=True,
                        env=env(8), timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'batch 16 over 8 devices' in proc.stdout
  for step in (1, 2, 3):
    eight, one = load(workdir, step), load(reference, step)
    assert int(eight['step']) == step
    assert_close(eight, one)
  # Not trivially equal: the alphas moved from one step to the next.
  assert not np.allclose(load(reference, 1)['alphas']['alphas_reduce']['value'],
                         load(reference, 3)['alphas']['alphas_reduce']['value'], atol=1e-7)


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(reference, tfds_dir, tmp_path):
  workdir = str(tmp_path / 'two_processes')
  port = free_port()
  procs = [subprocess.Popen(
      search_cmd(workdir, tfds_dir, '', 3, f'--coordinator_address=localhost:{port}',
                 '--num_processes=2', f'--process_id={i}'),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(2)) for i in (0, 1)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=600))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert 'batch 16 over 4 devices in 2 processes' in outs[0][0]
  assert 'supernet val accuracy' in outs[0][0]
  assert 'dnas search' not in outs[1][0] and 'supernet val accuracy' not in outs[1][0]
  assert committed_steps(workdir) == [1, 2, 3]
  for step in (1, 3):
    assert_close(load(workdir, step), load(reference, step))
  assert json.load(open(os.path.join(workdir, 'result.json')))['steps'] == 3
  assert [json.loads(l)['step'] for l in open(os.path.join(workdir, 'alphas.jsonl'))] == [3]


def corrupt(workdir, step):
  for root, _, files in os.walk(os.path.join(workdir, 'checkpoints', str(step))):
    for f in files:
      with open(os.path.join(root, f), 'wb') as fh:
        fh.write(b'garbage')


def test_killed_and_resumed_search_is_bitwise_the_uninterrupted_one(reference, tfds_dir,
                                                                    cache_dir, tmp_path):
  """Four interruptions at random points (three SIGKILLs, one SIGTERM), one corrupted
  checkpoint, then the same command to the end: the reference's final state, bit for bit."""
  seed = int(os.environ.get('DNAS_KILL_SEED', time.time_ns() % 10_000))
  rng = random.Random(seed)
  workdir = str(tmp_path / 'killed')
  cmd = search_cmd(workdir, tfds_dir, cache_dir, STEPS)
  targets = sorted(rng.sample(range(1, STEPS - 3), 4))
  log = []  # (signal, step reached when sent, steps committed after)
  for i, target in enumerate(targets):
    term = i == 2
    start = max(committed_steps(workdir), default=0)
    with open(tmp_path / f'out{i}.txt', 'w') as out, open(tmp_path / f'err{i}.txt', 'w') as err:
      proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env(1))
      # Each interruption lands after this run took a step (for SIGTERM a must: before the
      # loop it gets the default action) and before the last ones.
      goal = min(max(target, start + 1), STEPS - 2)
      # The run is finite: if it ends before the goal, the signal checks below fail.
      while max(committed_steps(workdir), default=0) < goal and proc.poll() is None:
        time.sleep(0.01)
      time.sleep(rng.uniform(0.0, 0.08))
      sent = max(committed_steps(workdir), default=0)
      proc.send_signal(signal.SIGTERM if term else signal.SIGKILL)
      rc = proc.wait(timeout=120)
    stdout = open(tmp_path / f'out{i}.txt').read()
    stderr = open(tmp_path / f'err{i}.txt').read()
    if term:
      assert rc == 143, stderr[-3000:]
      saved = int(re.search(r'SIGTERM: stopped after step (\d+) of 12', stderr).group(1))
      assert max(committed_steps(workdir)) == saved < STEPS
    else:
      assert rc == -signal.SIGKILL, (rc, stderr[-3000:])  # killed while running
    if i == 2:  # the run after the corruption fell back to the previous checkpoint
      assert f'WARNING: checkpoint {corrupted} in' in stdout, stdout[-2000:]
      assert f'Resumed from the checkpoint at step {corrupted - 1}' in stdout, stdout[-2000:]
    log.append(('TERM' if term else 'KILL', sent, committed_steps(workdir)[-1:]))
    if i == 1:
      corrupted = max(committed_steps(workdir))
      corrupt(workdir, corrupted)
  print(f'kill seed {seed}: targets {targets}: {log}')

  proc = subprocess.run(cmd, capture_output=True, text=True, env=env(1), timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Resumed from the checkpoint at step' in proc.stdout
  assert_bitwise(load(workdir, STEPS), load(reference, STEPS))
  for name in ('alphas.jsonl', 'genotype.json'):
    assert open(os.path.join(workdir, name)).read() == open(os.path.join(reference, name)).read()
