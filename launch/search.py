"""dnas-search: run (or resume) a differentiable architecture search.

    dnas-search --config=configs/default.py --workdir=/tmp/dnas_default [--config.field=value]

Re-running the same command on the same workdir resumes from its newest checkpoint.
"""

from absl import app

from dnas.launch import trainer_main

_CONFIG, _WORKDIR, _CACHE = trainer_main.define_flags(
    'Search config file (configs/*.py).',
    'Directory for checkpoints, metrics, genotype.')


def _load():
  from dnas.trainers import search
  return search.search


def main(argv):
  trainer_main.run_trainer('dnas-search', _load, argv, _CONFIG.value, _WORKDIR.value, _CACHE.value)


def run():
  app.run(main)


if __name__ == '__main__':
  run()
