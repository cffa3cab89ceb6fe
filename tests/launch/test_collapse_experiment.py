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
