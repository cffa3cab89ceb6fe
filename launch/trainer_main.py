"""What dnas-search and dnas-retrain share: the flags, the compilation cache, joining a
multi-process run, one-line errors.

A trainer is `train(config, workdir)`; bad input raises one of the errors caught below, printed
as `<prog>: error: ...` (no traceback) with exit status 1. A run stopped by SIGTERM saves a
checkpoint and exits with status 143 (the same command resumes it).
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dnas.launch import xla_workarounds

xla_workarounds.apply()  # before any JAX backend starts


def define_flags(config_help: str, workdir_help: str):
  """--config (locked: an unknown field is an error), --workdir, --compilation_cache_dir."""
  config = config_flags.DEFINE_config_file('config', None, config_help, lock_config=True)
  workdir = flags.DEFINE_string('workdir', None, workdir_help)
  cache = flags.DEFINE_string('compilation_cache_dir', '~/.cache/dnas/xla',
                              'Persistent XLA compilation cache ("" disables it).')
  flags.DEFINE_bool('multihost', False,
                    'Join a multi-host run (jax.distributed.initialize() with cluster '
                    'auto-detection: every worker of a Cloud TPU slice runs the same command).')
  flags.DEFINE_string('coordinator_address', '',
                      'host:port of process 0, to join processes explicitly (with '
                      '--num_processes, --process_id; or JAX_COORDINATOR_ADDRESS, '
                      'JAX_NUM_PROCESSES, JAX_PROCESS_ID).')
  flags.DEFINE_integer('num_processes', 0, 'Processes in the run (with --coordinator_address).')
  flags.DEFINE_integer('process_id', -1, 'This process, 0..num_processes-1 (with '
                       '--coordinator_address).')
  flags.mark_flags_as_required(['config', 'workdir'])
  return config, workdir, cache


def run_trainer(prog: str, load_train, argv, config, workdir, cache_dir) -> None:
  """Runs `load_train()(config, workdir)`; the import is deferred so that --help is fast."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  import jax
  if cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(cache_dir))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  from dnas.genotype import GenotypeError
  from dnas.trainers import checkpoint, data, sharding
  f = flags.FLAGS
  try:
    # Before anything touches a device: the runtime must know every process first.
    sharding.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id,
                                    f.multihost)
  except ValueError as e:
    print(f'{prog}: error: {e}', file=sys.stderr)
    sys.exit(1)
  train = load_train()
  try:
    train(config, workdir)
  except (ValueError, FileNotFoundError, FloatingPointError, checkpoint.WorkdirMismatchError,
          data.DatasetNotFoundError, GenotypeError) as e:
    print(f'{prog}: error: {e}', file=sys.stderr)
    sys.exit(1)
  except checkpoint.Preempted as e:
    print(f'{prog}: {e}', file=sys.stderr)
    sys.exit(checkpoint.Preempted.exit_code)
