"""The collapse experiment of issue 6: vanilla DARTS vs each regularizer, same seeds and budget.

    python -m dnas.launch.collapse_experiment --out_dir=/tmp/collapse --epochs=20 \
        --seeds=2,3 --methods=vanilla,beta_decay,sdarts_rs,darts_minus,pdarts

runs one `dnas-search` per (method, seed), one after the other (each in its own process, so
that the step times are comparable), in `<out_dir>/<method>/seed<k>`; an existing finished
workdir is reused (rerun the same command to resume or to re-tabulate). Then it writes
`<out_dir>/table.md` / `table.json` (per method, mean over seeds: skips and parameter-free
ops in the normal cell of DARTS' read-off, skips in the written genotype after any cap,
supernet val accuracy, steady step time and its overhead vs vanilla, early stops) and
`<out_dir>/skips.png` (normal-cell skips vs epoch; needs matplotlib).

`--dry_run` prints the commands and the time estimate only. The estimate is epochs x
steps per epoch x `--step_seconds` (measure it with one short run first: the default
search's step is about 1 s on 2 CPU cores) plus a compile per run; regularizers that add
passes (sdarts_adv, rdarts) take longer.
Not run to completion in this repository yet: no results are claimed here.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
from absl import app, flags

METHODS = {
    'vanilla': [],
    'beta_decay': ['--config.regularizers=("beta_decay",)'],
    'zero_one': ['--config.regularizers=("zero_one",)', '--config.relaxation=sigmoid'],
    'sdarts_rs': ['--config.regularizers=("sdarts_rs",)'],
    'sdarts_adv': ['--config.regularizers=("sdarts_adv",)'],
    'darts_minus': ['--config.regularizers=("darts_minus",)'],
    'pdarts': ['--config.regularizers=("pdarts",)'],
    'rdarts': ['--config.regularizers=("rdarts",)'],
    'darts_plus': ['--config.regularizers=("darts_plus",)'],
}

FLAGS = flags.FLAGS
flags.DEFINE_string('out_dir', None, 'where the workdirs, table and plot go')
flags.DEFINE_string('config', os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'configs', 'default.py'), 'base search config')
flags.DEFINE_list('methods', list(METHODS), f'subset of {", ".join(METHODS)}')
flags.DEFINE_list('seeds', ['2', '3'], 'seeds (at least 2 per method for the table)')
flags.DEFINE_integer('epochs', 20, 'search epochs (the same budget for every method)')
flags.DEFINE_integer('steps_per_epoch', 0, '0: one pass over the train split')
flags.DEFINE_multi_string('override', [], 'extra --config.* overrides for every run')
flags.DEFINE_float('step_seconds', 1.0, 'measured seconds per step, for the estimate')
flags.DEFINE_bool('dry_run', False, 'print the commands and the estimate, run nothing')


def command(method: str, seed: str, workdir: str) -> list[str]:
  return [sys.executable, '-m', 'dnas.launch.search', f'--config={FLAGS.config}',
          f'--workdir={workdir}', f'--config.seed={seed}', f'--config.epochs={FLAGS.epochs}',
          f'--config.steps_per_epoch={FLAGS.steps_per_epoch}', *METHODS[method],
          *FLAGS.override]


def run(method: str, seed: str, workdir: str) -> dict:
  """One search (or its earlier result); returns its summary."""
  log = os.path.join(workdir, 'experiment_log.txt')
  if not os.path.exists(os.path.join(workdir, 'result.json')):
    os.makedirs(workdir, exist_ok=True)
    proc = subprocess.run(command(method, seed, workdir), capture_output=True, text=True,
                          env=dict(os.environ, TQDM_DISABLE='1'))
    with open(log, 'w') as f:
      f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
      raise RuntimeError(f'{method} seed {seed} failed (see {log}):\n{proc.stderr[-2000:]}')
  return summarize(workdir)


def summarize(workdir: str) -> dict:
  result = json.load(open(os.path.join(workdir, 'result.json')))
  history = [json.loads(l) for l in open(os.path.join(workdir, 'alphas.jsonl'))]
  text = open(os.path.join(workdir, 'experiment_log.txt')).read() if os.path.exists(
      os.path.join(workdir, 'experiment_log.txt')) else ''
  first = re.search(r'first step \(compile included\): ([0-9.]+) s', text)
  steps = result['steps']
  steady = ((result['wall_seconds_this_run'] - float(first.group(1))) / max(steps - 1, 1)
            if first else None)
  final = result['genotype']['normal']
  return {'skips': history[-1]['normal_cell_skips'],
          'parameter_free': history[-1]['normal_cell_parameter_free'],
          'skips_written': sum(op == 'skip_connect' for op, _ in final),
          'val_accuracy': result['supernet_val_accuracy'], 'steps': steps,
          'step_seconds': steady, 'early_stop': (result.get('early_stop') or {}).get('rule'),
          'skips_per_epoch': [(h['epoch'], h['normal_cell_skips']) for h in history]}


def table(rows: dict) -> str:
  base = np.mean([r['step_seconds'] for r in rows.get('vanilla', []) if r['step_seconds']] or
                 [np.nan])
  lines = ['| method | seeds | normal-cell skips | parameter-free ops | skips written | '
           'supernet val acc | step s | overhead vs vanilla | early stops |',
           '|---|---|---|---|---|---|---|---|---|']
  for method, rs in rows.items():
    mean = lambda k: np.mean([r[k] for r in rs if r[k] is not None] or [np.nan])
    stops = [r['early_stop'] for r in rs if r['early_stop']]
    lines.append(f'| {method} | {len(rs)} | {mean("skips"):.1f} | {mean("parameter_free"):.1f} | '
                 f'{mean("skips_written"):.1f} | {mean("val_accuracy"):.4f} | '
                 f'{mean("step_seconds"):.2f} | {mean("step_seconds") / base:.2f}x | '
                 f'{len(stops)}/{len(rs)} |')
  return '\n'.join(lines) + '\n'


def plot(rows: dict, path: str) -> None:
  try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
  except ImportError:
    print('matplotlib missing: no plot (pip install -e ".[plot]")')
    return
  fig, ax = plt.subplots(figsize=(6, 4))
  for method, rs in rows.items():
    for i, r in enumerate(rs):
      e, s = zip(*r['skips_per_epoch'])
      ax.plot(e, s, color=f'C{list(rows).index(method)}', alpha=0.8,
              label=method if i == 0 else None)
  ax.set_xlabel('epoch')
  ax.set_ylabel('skip connections in the normal cell')
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)


def main(argv):
  del argv
  if not FLAGS.out_dir:
    raise app.UsageError('--out_dir is required')
  unknown = [m for m in FLAGS.methods if m not in METHODS]
  if unknown:
    raise app.UsageError(f'unknown method(s) {unknown}; valid: {", ".join(METHODS)}')
  runs = [(m, s) for m in FLAGS.methods for s in FLAGS.seeds]
  if FLAGS.dry_run:
    for m, s in runs:
      print(' '.join(command(m, s, os.path.join(FLAGS.out_dir, m, f'seed{s}'))))
    # mnist5k's train split: 2,000 digits, / batch 32 (the default config) = 62 steps.
    steps = FLAGS.epochs * (FLAGS.steps_per_epoch or 2000 // 32)
    print(f'{len(runs)} runs x {steps} steps x {FLAGS.step_seconds} s = '
          f'{len(runs) * steps * FLAGS.step_seconds / 3600:.1f} h plus compiles')
    return
  rows = {}
  for m, s in runs:
    rows.setdefault(m, []).append(run(m, s, os.path.join(FLAGS.out_dir, m, f'seed{s}')))
    print(f'{m} seed {s}: {rows[m][-1]["skips"]} skips, val acc '
          f'{rows[m][-1]["val_accuracy"]:.4f}', flush=True)
  text = table(rows)
  with open(os.path.join(FLAGS.out_dir, 'table.md'), 'w') as f:
    f.write(text)
  with open(os.path.join(FLAGS.out_dir, 'table.json'), 'w') as f:
    json.dump(rows, f, indent=1)
  plot(rows, os.path.join(FLAGS.out_dir, 'skips.png'))
  print(text)


if __name__ == '__main__':
  app.run(main)
