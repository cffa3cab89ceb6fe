"""dnas-retrain: train a genotype's stand-alone network from scratch and test it.

    dnas-retrain --config=configs/retrain_default.py --workdir=/tmp/dnas_retrain \
        [--config.genotype=DARTS_V2 | --config.genotype=/path/to/genotype.json]

Re-running the same command on the same workdir resumes from its newest checkpoint.
"""

from absl import app

from dnas.launch import trainer_main

_CONFIG, _WORKDIR, _CACHE = trainer_main.define_flags(
    'Retrain config file (configs/*.py).',
    'Directory for checkpoints, metrics, result.')


def _load():
  from dnas.trainers import retrain
  return retrain.retrain


def main(argv):
  trainer_main.run_trainer('dnas-retrain', _load, argv, _CONFIG.value, _WORKDIR.value, _CACHE.value)


def run():
  app.run(main)


if __name__ == '__main__':
  run()
