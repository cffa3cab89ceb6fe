"""dnas-retrain end to end through its command line, on the real offline data (tiny network).

The genotype is what a search writes (derived from op weights, saved by dnas.genotype.save,
as trainers/search.py does) and goes in with no hand edits. One run trains 2 steps and
tests; a second invocation with more epochs resumes; bad input fails with one clear line.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dnas import genotype
from dnas.cells import darts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, 'configs', 'retrain_default.py')


@pytest.fixture(scope='module')
def searched_genotype(tmp_path_factory):
  """<workdir>/genotype.json exactly as a search writes it, from random op weights."""
  rng = np.random.default_rng(0)
  n = darts.num_edges()
  geno = genotype.derive(rng.dirichlet(np.ones(8), n), rng.dirichlet(np.ones(8), n),
                         darts.PRIMITIVES)
  path = tmp_path_factory.mktemp('search') / 'genotype.json'
  genotype.save(geno, path)
  return str(path), geno


def run_retrain(workdir, tfds_dir, cache_dir, geno_path, *overrides):
  cmd = [sys.executable, '-m', 'dnas.launch.retrain', f'--config={CONFIG}',
         f'--workdir={workdir}', f'--compilation_cache_dir={cache_dir}',
         f'--config.data_dir={tfds_dir}', f'--config.genotype={geno_path}',
         '--config.model.channels=4', '--config.model.layers=3', '--config.batch_size=16',
         '--config.steps_per_epoch=2', '--config.log_every_steps=1',
         '--config.checkpoint_every_steps=2', '--config.eval_every_epochs=1', *overrides]
  env = dict(os.environ, TQDM_DISABLE='1')
  return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def test_a_searched_genotype_retrains_resumes_and_keeps_its_workdir(
    tmp_path, tfds_dir, cache_dir, searched_genotype):
  """One test, so that parallel workers do not each repeat the first run."""
  geno_path, geno = searched_genotype
  workdir = str(tmp_path / 'retrain')
  proc = run_retrain(workdir, tfds_dir, cache_dir, geno_path, '--config.epochs=1')
  assert proc.returncode == 0, proc.stderr[-3000:]

  # ---- the run's outputs
  result = json.load(open(os.path.join(workdir, 'result.json')))
  assert result['steps'] == 2 and result['test_split'] == 'test'
  assert 0.0 <= result['test_accuracy'] <= 1.0
  assert f'test accuracy: {result["test_accuracy"]:.4f}' in proc.stdout
  # Every one of the 1,000 test digits was scored: accuracy is a multiple of 1/1000.
  assert abs(result['test_accuracy'] * 1000 - round(result['test_accuracy'] * 1000)) < 1e-9
  assert result['genotype'] == geno.to_json()
  assert genotype.load(os.path.join(workdir, 'genotype.json'), darts.PRIMITIVES,
                       space='darts') == geno
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '2'))
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(workdir, 'tb')))

  # ---- the same command with more epochs resumes
  resumed = str(tmp_path / 'resumed')
  subprocess.run(['cp', '-r', workdir, resumed], check=True)
  proc = run_retrain(resumed, tfds_dir, cache_dir, geno_path, '--config.epochs=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Resumed from the checkpoint at step 2' in proc.stdout
  assert json.load(open(os.path.join(resumed, 'result.json')))['steps'] == 4
  assert os.path.isdir(os.path.join(resumed, 'checkpoints', '4'))

  # ---- another genotype on the same workdir is refused, nothing touched
  proc = run_retrain(workdir, tfds_dir, cache_dir, 'DARTS_V2', '--config.epochs=1')
  assert proc.returncode == 1
  assert "another experiment's checkpoints (genotype:" in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']

  # ---- a NaN loss stops the run naming the step and the last good checkpoint. The lr is
  # fed per step, so the step-3 update makes the weights NaN and step 4's loss shows it.
  proc = run_retrain(resumed, tfds_dir, cache_dir, geno_path, '--config.epochs=3',
                     '--config.optim.lr=nan')
  assert proc.returncode == 1
  assert 'at step 6; last good checkpoint: step 4' in proc.stderr, proc.stderr[-2000:]
  assert os.path.isdir(os.path.join(resumed, 'checkpoints', '4'))


def test_missing_default_genotype_says_run_the_search_first(tmp_path, tfds_dir, cache_dir):
  proc = run_retrain(str(tmp_path / 'w'), tfds_dir, cache_dir,
                     str(tmp_path / 'dnas_default' / 'genotype.json'))
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith('dnas-retrain: error: genotype file ')
  assert 'run the search first' in lines[-1] and '--config.genotype=DARTS_V2' in lines[-1]
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'w')  # refused before anything was written
