"""dnas-bench: parameters, FLOPs, compile time, latency, throughput and memory of genotypes.

    dnas-bench --genotype=DARTS_V2 --genotype=PC_DARTS --genotype=/tmp/dnas_default/genotype.json
    dnas-bench --genotype=DARTS_V2 --network=imagenet        # mobile setting, 224x224
    dnas-bench --genotype='|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|'
    dnas-bench --genotype=/tmp/dnas_nb201/genotype.json      # an NB201 search's arch, C=16 N=5

Prints a table (one column per genotype) and then the same results as one JSON line
(also written to --json_out). With several genotypes each one runs in its own process, so
that its peak memory is its own. The persistent compilation cache is not used: compile
seconds are real compiles.
"""
import json
import subprocess
import sys

from absl import app, flags, logging

_GENOTYPE = flags.DEFINE_multi_string('genotype', None, 'Known genotype name (DARTS_V1, '
                                      'DARTS_V2, PC_DARTS, P_DARTS, DrNAS), a NAS-Bench-201 '
                                      'arch string, or a genotype.json path (either space); '
                                      'repeat for a side-by-side comparison.')
_NETWORK = flags.DEFINE_enum('network', None, ['cifar', 'imagenet', 'nb201'],
                             'Network (default: cifar for DARTS genotypes, nb201 for NB201).')
_CHANNELS = flags.DEFINE_integer('channels', None, 'Initial channels (default: the paper\'s, '
                                 '36 cifar / 48 imagenet / 16 nb201).')
_LAYERS = flags.DEFINE_integer('layers', None, 'Cells (default 20 cifar / 14 imagenet); for '
                               'nb201 the cells per stage N (default 5).')
_IMAGE = flags.DEFINE_integer('image_size', None, 'Input size (default 32 / 224).')
_BATCH = flags.DEFINE_integer('batch', 64, 'Batch size of the throughput measurement.')
_REPEATS = flags.DEFINE_integer('repeats', 20, 'Timed batch-1 runs (throughput: a quarter).')
_FORM = flags.DEFINE_string('conv_form', 'auto', 'auto | folded | shift | grouped')
_JSON_OUT = flags.DEFINE_string('json_out', '', 'Also write the results (a JSON list) here.')
_ISOLATE = flags.DEFINE_bool('isolate', True, 'Several genotypes: one process each.')
_ONLY_JSON = flags.DEFINE_bool('only_json', False, 'Print the JSON line only.')
flags.mark_flags_as_required(['genotype'])

_PASSED = ('network', 'channels', 'layers', 'image_size', 'batch', 'repeats', 'conv_form')


def _one_in_subprocess(genotype: str) -> dict:
  cmd = [sys.executable, '-m', 'dnas.launch.bench', f'--genotype={genotype}', '--noisolate',
         '--only_json']
  for name in _PASSED:
    value = flags.FLAGS[name].value
    if value is not None:
      cmd.append(f'--{name}={value}')
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    print(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else
          f'dnas-bench: error: benchmark of {genotype} failed', file=sys.stderr)
    sys.exit(1)
  return json.loads(proc.stdout.strip().splitlines()[-1])[0]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # jax / matplotlib log their start-up at INFO
  from dnas.genotype import GenotypeError
  from dnas.cells import standalone
  try:  # bad names and genotype/network mismatches fail before anything is compiled
    for g in _GENOTYPE.value:
      arch = standalone.resolve(g)
      if _NETWORK.value:
        standalone.check_network(arch, _NETWORK.value)
  except (GenotypeError, ValueError) as e:
    print(f'dnas-bench: error: {e}', file=sys.stderr)
    sys.exit(1)
  if _ISOLATE.value and len(_GENOTYPE.value) > 1:
    results = [_one_in_subprocess(g) for g in _GENOTYPE.value]
  else:
    from dnas.trainers import benchmark
    try:
      results = [benchmark.benchmark(g, network=_NETWORK.value, channels=_CHANNELS.value,
                                     layers=_LAYERS.value, image_size=_IMAGE.value,
                                     batch=_BATCH.value, repeats=_REPEATS.value,
                                     conv_form=_FORM.value) for g in _GENOTYPE.value]
    except (ValueError, GenotypeError) as e:
      print(f'dnas-bench: error: {e}', file=sys.stderr)
      sys.exit(1)
  if not _ONLY_JSON.value:
    from dnas.trainers import benchmark
    print(benchmark.table(results))
  print(json.dumps(results), flush=True)
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, 'w') as f:
      json.dump(results, f, indent=2)


def run():
  app.run(main)


if __name__ == '__main__':
  run()
