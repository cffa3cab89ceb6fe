"""dnas-search end to end through its command line, on the real offline data (tiny network).

One search runs 2 steps, writes a valid genotype and a checkpoint; a second invocation with
more epochs resumes from that checkpoint; the bad-input cases fail with one clear line and
leave the finished work in place.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dnas import genotype
from dnas.cells import darts

# One worker runs this module (pytest -n 2 --dist loadgroup): the tests share one finished
# search (a module fixture would otherwise run once per xdist worker) and its XLA cache.
pytestmark = pytest.mark.xdist_group('search_cli')

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, 'configs', 'default.py')
# What these runs check (files, resume, warm-up, errors) does not depend on the op set: 4 of
# the 8 ops halve tracing, compiling and evaluating. The second-order test searches with all 8.
OPS = ('none', 'max_pool_3x3', 'skip_connect', 'sep_conv_3x3')


def run_search(workdir, tfds_dir, cache_dir, *overrides, ops=OPS):
  """ops=None: the config's 8 ops. (A tuple field given twice on the command line is
  concatenated, so the op set is an argument, not an override.)"""
  cmd = [sys.executable, '-m', 'dnas.launch.search', f'--config={CONFIG}',
         f'--workdir={workdir}', f'--compilation_cache_dir={cache_dir}',
         f'--config.data_dir={tfds_dir}', '--config.model.channels=4', '--config.model.layers=3',
         '--config.batch_size=16', '--config.steps_per_epoch=2', '--config.log_every_steps=1',
         '--config.checkpoint_every_steps=2', *overrides]
  if ops is not None:
    cmd.append(f'--config.model.primitives={ops!r}')
  env = dict(os.environ, TQDM_DISABLE='1')
  return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, tfds_dir, cache_dir):
  workdir = str(tmp_path_factory.mktemp('search'))
  proc = run_search(workdir, tfds_dir, cache_dir, '--config.epochs=1')
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


def test_search_writes_a_valid_genotype_and_checkpoint(finished_run):
  workdir, proc = finished_run
  geno = genotype.load(os.path.join(workdir, 'genotype.json'), darts.PRIMITIVES, space='darts')
  assert len(geno.normal) == 8 and len(geno.reduce) == 8
  assert 'genotype' in proc.stdout and '"schema_version": 1' in proc.stdout
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '2'))
  result = json.load(open(os.path.join(workdir, 'result.json')))
  assert 0.0 <= result['supernet_val_accuracy'] <= 1.0 and result['steps'] == 2
  history = [json.loads(l) for l in open(os.path.join(workdir, 'alphas.jsonl'))]
  assert [h['step'] for h in history] == [2]
  assert len(history[0]['normal']) == 14 and len(history[0]['normal'][0]) == len(OPS)
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(workdir, 'tb')))


def test_rerun_resumes_from_the_checkpoint(finished_run, tfds_dir, cache_dir, tmp_path):
  workdir, _ = finished_run
  resumed = str(tmp_path / 'resumed')
  subprocess.run(['cp', '-r', workdir, resumed], check=True)
  before = json.load(open(os.path.join(workdir, 'result.json')))
  proc = run_search(resumed, tfds_dir, cache_dir, '--config.epochs=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Resumed from the checkpoint at step 2' in proc.stdout
  history = [json.loads(l) for l in open(os.path.join(resumed, 'alphas.jsonl'))]
  assert [h['step'] for h in history] == [2, 4]
  # The resumed run started from the saved alphas, not from a fresh initialisation.
  first = [json.loads(l) for l in open(os.path.join(workdir, 'alphas.jsonl'))][0]
  assert history[0] == first
  alphas = lambda h: (h['normal'], h['reduce'])
  assert alphas(history[1]) != alphas(history[0])  # the architecture steps moved the alphas
  assert json.load(open(os.path.join(resumed, 'result.json')))['steps'] == 4
  assert before['steps'] == 2


def test_architecture_warm_up_trains_only_the_weights(finished_run, tfds_dir, cache_dir,
                                                      tmp_path):
  """Resumed with a 2-epoch warm-up (`optim.arch_warmup_epochs`, PC-DARTS' first epochs):
  steps 3-4 lie in it, so the alphas after step 4 are those after step 2, while the same
  resume without warm-up moves them (test above)."""
  workdir, _ = finished_run
  resumed = str(tmp_path / 'warm')
  subprocess.run(['cp', '-r', workdir, resumed], check=True)
  proc = run_search(resumed, tfds_dir, cache_dir, '--config.epochs=2',
                    '--config.optim.arch_warmup_epochs=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'weights only (no architecture step) for the first 4 steps' in proc.stdout
  history = [json.loads(l) for l in open(os.path.join(resumed, 'alphas.jsonl'))]
  assert [h['step'] for h in history] == [2, 4]
  assert (history[1]['normal'], history[1]['reduce']) == (history[0]['normal'],
                                                          history[0]['reduce'])
  bad = run_search(str(tmp_path / 'bad'), tfds_dir, cache_dir, '--config.epochs=1',
                   '--config.optim.arch_warmup_epochs=3')
  assert bad.returncode != 0
  assert 'optim.arch_warmup_epochs must be a whole number of epochs from 0 to epochs (1)' in (
      bad.stderr), bad.stderr[-2000:]


@pytest.mark.xdist_group('second_order_cli')  # its own worker: off the shared run's path
def test_second_order_search_takes_the_unrolled_path(tfds_dir, tmp_path):
  """Same data, seed and (1-cell) config, order 1 vs order 2: the alphas after the same steps
  differ, so the unrolled gradient was really used (no silent fallback)."""
  cache = str(tmp_path / 'cache')
  runs = {}
  for order, extra in ((1, []), (2, ['--config.bilevel.hvp=exact'])):
    workdir = str(tmp_path / f'order{order}')
    proc = run_search(workdir, tfds_dir, cache, '--config.epochs=1', '--config.model.layers=1',
                      f'--config.bilevel.order={order}', *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs[order] = json.loads(open(os.path.join(workdir, 'alphas.jsonl')).readline())
    genotype.load(os.path.join(workdir, 'genotype.json'), darts.PRIMITIVES, space='darts')
  assert 'second order (hvp=exact, xi=the weight lr)' in proc.stdout
  assert runs[1]['step'] == runs[2]['step'] == 2
  # One cell is a reduction cell: its alphas are the ones trained.
  diff = np.abs(np.array(runs[2]['reduce']) - np.array(runs[1]['reduce'])).max()
  assert diff > 1e-6, diff


@pytest.mark.parametrize('overrides, message', [
    (['--config.no_such_field=1'], 'no_such_field'),
    (['--config.relaxation=gumble'], "unknown relaxation 'gumble'; valid names: dirichlet, "
                                     'gumbel_hard, gumbel_softmax, sigmoid, softmax'),
    (["--config.model.primitives=('sep_conv_3x3','conv_9x9')"], "unknown DARTS op(s) ['conv_9x9']"),
    (["--config.model.primitives=('skip_connect','sep_conv_3x3','skip_connect')"],
     "DARTS op list ['skip_connect', 'sep_conv_3x3', 'skip_connect'] repeats an op; list each once"),
    (['--config.dataset=imagenet'], "Unknown dataset 'imagenet'"),
    (['--config.bilevel.hvp=exact'], 'bilevel.hvp and bilevel.xi only apply to second order'),
    (['--config.bilevel.order=3'], 'bilevel.order must be 1 (first order) or 2 (unrolled)'),
])
def test_bad_config_is_one_clear_error(tmp_path, tfds_dir, cache_dir, overrides, message):
  proc = run_search(str(tmp_path / 'w'), tfds_dir, cache_dir, *overrides, ops=None)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr or 'no_such_field' in message


def test_missing_cifar10_names_the_fix(tmp_path, cache_dir):
  empty = str(tmp_path / 'empty_tfds')
  os.makedirs(empty)
  proc = run_search(str(tmp_path / 'w'), empty, cache_dir, '--config.dataset=cifar10')
  assert proc.returncode == 1
  assert 'download_and_prepare' in proc.stderr and empty in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_workdir_of_another_experiment_is_refused_and_kept(finished_run, tfds_dir, cache_dir):
  workdir, _ = finished_run
  before = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  proc = run_search(workdir, tfds_dir, cache_dir, '--config.epochs=1', '--config.model.channels=6')
  assert proc.returncode == 1
  assert "another experiment's checkpoints (model.channels: 4 -> 6)" in proc.stderr
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == before


def test_nan_loss_stops_naming_the_step_and_last_good_checkpoint(finished_run, tfds_dir,
                                                                  cache_dir, tmp_path):
  workdir, _ = finished_run
  copy = str(tmp_path / 'nan')
  subprocess.run(['cp', '-r', workdir, copy], check=True)
  proc = run_search(copy, tfds_dir, cache_dir, '--config.epochs=2', '--config.optim.arch_lr=nan')
  assert proc.returncode == 1
  assert 'at step 3; last good checkpoint: step 2' in proc.stderr, proc.stderr[-2000:]
  assert os.path.isdir(os.path.join(copy, 'checkpoints', '2'))
  assert os.path.exists(os.path.join(copy, 'genotype.json'))  # earlier output is kept
