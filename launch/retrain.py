"""dnas-retrain: train a genotype's stand-alone network from scratch and test it.

    dnas-retrain --config=configs/retrain_default.py --workdir=/tmp/dnas_retrain \
        [--config.genotype=DARTS_V2 | --config.genotype=/path/to/genotype.json]

Re-running the same command on the same workdir resumes from its newest checkpoint.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Retrain config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, result.')
_CACHE = flags.DEFINE_string('compilation_cache_dir', '~/.cache/dnas/xla',
                             'Persistent XLA compilation cache ("" disables it).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  import jax  # after flag parsing, so that --help is fast
  if _CACHE.value:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(_CACHE.value))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  from dnas.trainers import checkpoint, data, retrain
  from dnas.genotype import GenotypeError
  try:
    retrain.retrain(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError, FloatingPointError, checkpoint.WorkdirMismatchError,
          data.DatasetNotFoundError, GenotypeError) as e:
    print(f'dnas-retrain: error: {e}', file=sys.stderr)
    sys.exit(1)


def run():
  app.run(main)


if __name__ == '__main__':
  run()
