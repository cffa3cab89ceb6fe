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
Results of one run on the 2-core machine (R-DARTS' S3 space, 16 epochs x 10 steps, 9 methods
x 2 seeds, 47 min): docs/collapse/ and the README's "The collapse experiment".
"""
import glob
import json
import os
import re
import resource
import struct
import subprocess
import sys
import time

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


def _children_cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def run(method: str, seed: str, workdir: str) -> dict:
  """One search (or its earlier result); returns its summary."""
  log = os.path.join(workdir, 'experiment_log.txt')
  if not os.path.exists(os.path.join(workdir, 'result.json')):
    os.makedirs(workdir, exist_ok=True)
    # The machine may be shared: its load around each run, to read the step times against.
    load_start, cpu_start, t_start = os.getloadavg()[0], _children_cpu(), time.time()
    proc = subprocess.run(command(method, seed, workdir), capture_output=True, text=True,
                          env=dict(os.environ, TQDM_DISABLE='1'))
    with open(log, 'w') as f:
      f.write(proc.stdout + proc.stderr)
    with open(os.path.join(workdir, 'run_info.json'), 'w') as f:
      json.dump({'load_avg_start': load_start, 'load_avg_end': os.getloadavg()[0],
                 'cpu_seconds': round(_children_cpu() - cpu_start, 1),
                 'process_wall_seconds': round(time.time() - t_start, 1)}, f)
    if proc.returncode != 0:
      raise RuntimeError(f'{method} seed {seed} failed (see {log}):\n{proc.stderr[-2000:]}')
  return summarize(workdir)


def tb_events(workdir: str) -> dict[str, list[tuple[int, float, float]]]:
  """tag -> [(step, wall time, value)] from the run's TensorBoard event files (TFRecords:
  length, crc, event, crc); {} without them."""
  from tensorboardX.proto import event_pb2
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'tb', 'events.out.tfevents*'))):
    data = open(path, 'rb').read()
    i = 0
    while i + 12 <= len(data):
      (n,) = struct.unpack('<Q', data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((int(event.step), event.wall_time, v.simple_value))
  return out


def steady_step_seconds(events: dict, epoch_end_steps) -> float | None:
  """Median seconds per step over the logging intervals (a, b] of `search/train_loss` that
  hold training steps only: no epoch end in [a, b) (the read-off, the eigenvalue, the
  supernet evaluation and most checkpoints run after the step-a log line). The median keeps
  other jobs' load spikes out of the step time and the overhead ratio."""
  logged = sorted({(s, t) for s, t, _ in events.get('search/train_loss', [])})
  ends = set(epoch_end_steps)
  per_step = [(tb - ta) / (b - a) for (a, ta), (b, tb) in zip(logged, logged[1:])
              if b > a and not any(s in ends for s in range(a, b))]
  return float(np.median(per_step)) if per_step else None


def summarize(workdir: str) -> dict:
  result = json.load(open(os.path.join(workdir, 'result.json')))
  history = [json.loads(l) for l in open(os.path.join(workdir, 'alphas.jsonl'))]
  text = open(os.path.join(workdir, 'experiment_log.txt')).read() if os.path.exists(
      os.path.join(workdir, 'experiment_log.txt')) else ''
  first = re.search(r'first step \(compile included\): ([0-9.]+) s', text)
  steps = result['steps']
  events = tb_events(workdir)
  steady = steady_step_seconds(events, [h['step'] for h in history if 'step' in h])
  if steady is None and first:  # no event files: the whole run's mean (evaluations included)
    steady = (result['wall_seconds_this_run'] - float(first.group(1))) / max(steps - 1, 1)
  final = result['genotype']['normal']
  steps_per_epoch = history[0]['step'] / history[0]['epoch'] if 'step' in history[0] else 1
  return {'skips': history[-1]['normal_cell_skips'],
          'parameter_free': history[-1]['normal_cell_parameter_free'],
          'skips_written': sum(op == 'skip_connect' for op, _ in final),
          'val_accuracy': result['supernet_val_accuracy'], 'steps': steps,
          'step_seconds': steady, 'early_stop': (result.get('early_stop') or {}).get('rule'),
          'skips_per_epoch': [(h['epoch'], h['normal_cell_skips']) for h in history],
          'wall_seconds': result['wall_seconds_this_run'],
          'run_info': (json.load(open(os.path.join(workdir, 'run_info.json'))) if os.path.exists(
              os.path.join(workdir, 'run_info.json')) else None),
          'val_accuracy_per_epoch': [(s / steps_per_epoch, v) for s, _, v in
                                     events.get('search/supernet_val_accuracy', [])]}


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
  fig, (ax, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  for method, rs in rows.items():
    color = f'C{list(rows).index(method)}'
    for i, r in enumerate(rs):
      e, s = zip(*r['skips_per_epoch'])
      # Methods that sit on the same count would hide each other: a small vertical offset.
      shift = 0.08 * (list(rows).index(method) - (len(rows) - 1) / 2)
      ax.plot(e, np.add(s, shift), color=color, alpha=0.8, label=method if i == 0 else None,
              marker='o' if len(e) == 1 else None)  # stopped after one epoch: a dot
      if r.get('val_accuracy_per_epoch'):
        e, a = zip(*r['val_accuracy_per_epoch'])
        ax_acc.plot(e, a, 'o-', color=color, alpha=0.8, label=method if i == 0 else None)
  ax.set_ylim(bottom=-0.3)
  ax.set_xlabel('epoch')
  ax.set_ylabel('skip connections in the normal cell\n(methods offset by < 0.25 to stay visible)',
                fontsize=8)
  ax.legend(fontsize=7)
  ax_acc.set_xlabel('epoch')
  ax_acc.set_ylabel('supernet val accuracy')
  ax_acc.legend(fontsize=7)
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
