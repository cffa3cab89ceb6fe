"""The collapse experiment's tabulation on crafted workdirs (the searches themselves are the
CLI's, tested elsewhere): skips, parameter-free ops, steady step time and overhead."""
import json
import os

from dnas.launch import collapse_experiment as exp


def fake_run(root, method, seed, skips, acc, wall, first, steps=10, stop=None):
  d = os.path.join(root, method, f'seed{seed}')
  os.makedirs(d)
  geno = {'normal': [['skip_connect', 0]] * 2 + [['sep_conv_3x3', 1]] * 6}
  result = {'steps': steps, 'supernet_val_accuracy': acc, 'wall_seconds_this_run': wall,
            'genotype': geno}
  if stop:
    result['early_stop'] = {'rule': stop}
  json.dump(result, open(os.path.join(d, 'result.json'), 'w'))
  with open(os.path.join(d, 'alphas.jsonl'), 'w') as f:
    for e, s in enumerate(skips, 1):
      f.write(json.dumps({'epoch': e, 'normal_cell_skips': s,
                          'normal_cell_parameter_free': s + 1}) + '\n')
  open(os.path.join(d, 'experiment_log.txt'), 'w').write(
      f'...\nfirst step (compile included): {first} s\n')
  return d


def test_summary_and_table(tmp_path):
  rows = {'vanilla': [exp.summarize(fake_run(tmp_path, 'vanilla', 2, [1, 3, 5], 0.8, 28, 10)),
                      exp.summarize(fake_run(tmp_path, 'vanilla', 3, [2, 4], 0.9, 19, 10))],
          'pdarts': [exp.summarize(fake_run(tmp_path, 'pdarts', 2, [1, 1], 0.95, 37, 10,
                                            stop='x'))]}
  assert rows['vanilla'][0]['skips'] == 5 and rows['vanilla'][0]['parameter_free'] == 6
  assert rows['vanilla'][0]['step_seconds'] == 2.0  # (28 - 10) / 9
  assert rows['vanilla'][0]['skips_written'] == 2
  text = exp.table(rows)
  assert '| vanilla | 2 | 4.5 | 5.5 | 2.0 | 0.8500 | 1.50 | 1.00x | 0/2 |' in text
  assert '| pdarts | 1 | 1.0 | 2.0 | 2.0 | 0.9500 | 3.00 | 2.00x | 1/1 |' in text


def test_steady_step_time_from_event_files_skips_epoch_ends(tmp_path):
  """Step time from the TensorBoard log times: the intervals holding an epoch end (read-off,
  evaluation) are left out and the median drops a load spike."""
  from tensorboardX import SummaryWriter
  d = fake_run(tmp_path, 'vanilla', 2, [8, 8], 0.3, 100, 50, steps=20)
  with open(os.path.join(d, 'alphas.jsonl'), 'w') as f:
    for step, epoch in ((10, 1.0), (20, 2.0)):
      f.write(json.dumps({'step': step, 'epoch': epoch, 'normal_cell_skips': 8,
                          'normal_cell_parameter_free': 8}) + '\n')
  writer = SummaryWriter(os.path.join(d, 'tb'))
  # Logged at steps 5, 10, 15, 20: 1 s per step, except (10, 15] which holds epoch 1's
  # evaluation (+30 s) and (15, 20] slowed to 3 s per step by another job.
  for step, t in ((5, 1000.0), (10, 1005.0), (15, 1040.0), (20, 1055.0)):
    writer.add_scalar('search/train_loss', 1.0, step, walltime=t)
  writer.add_scalar('search/supernet_val_accuracy', 0.2, 10, walltime=1006.0)
  writer.add_scalar('search/supernet_val_accuracy', 0.3, 20, walltime=1056.0)
  writer.close()
  r = exp.summarize(d)
  assert r['step_seconds'] == 2.0  # median of (5, 10] 1 s and (15, 20] 3 s; (10, 15] left out
  assert [(e, round(a, 3)) for e, a in r['val_accuracy_per_epoch']] == [(1.0, 0.2), (2.0, 0.3)]
  assert exp.steady_step_seconds({}, [10]) is None


def test_run_records_the_machine_load_and_cpu_time(tmp_path, monkeypatch):
  """run() launches the search (here a stand-in writing a finished workdir), keeps its output
  and records the load average around it and its CPU seconds."""
  import sys
  src = fake_run(tmp_path / 'src', 'vanilla', 2, [3, 4], 0.5, 20, 5)
  d = str(tmp_path / 'vanilla' / 'seed2')
  script = (f'import shutil, sys; shutil.copytree({src!r}, sys.argv[1], dirs_exist_ok=True); '
            'print("first step (compile included): 5 s")')
  monkeypatch.setattr(exp, 'command', lambda m, s, w: [sys.executable, '-c', script, w])
  r = exp.run('vanilla', '2', d)
  assert r['skips'] == 4 and r['val_accuracy'] == 0.5
  info = r['run_info']
  assert set(info) == {'load_avg_start', 'load_avg_end', 'cpu_seconds', 'process_wall_seconds'}
  assert info['cpu_seconds'] >= 0 and info['process_wall_seconds'] >= 0  # rounded to 0.1 s
  assert 'first step' in open(os.path.join(d, 'experiment_log.txt')).read()
