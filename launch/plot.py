"""dnas-plot: a genotype's cells as images, and a search's alphas over the epochs.

    dnas-plot --genotype=DARTS_V2 --out_dir=/tmp/plots          # cells_DARTS_V2.{png,svg}
    dnas-plot --genotype=/tmp/dnas_default/genotype.json          # cells_dnas_default.{png,svg}
    dnas-plot --alphas=/tmp/dnas_default/alphas.jsonl             # alphas_dnas_default.{png,svg}

Needs matplotlib: pip install 'dnas[plot]'.
"""
import os
import sys

from absl import app, flags, logging

_GENOTYPE = flags.DEFINE_multi_string('genotype', [], 'Known genotype name or genotype.json '
                                      'path (repeatable).')
_ALPHAS = flags.DEFINE_multi_string('alphas', [], 'A search\'s alphas.jsonl (repeatable).')
_OUT_DIR = flags.DEFINE_string('out_dir', '.', 'Where the images go.')
_FORMATS = flags.DEFINE_list('formats', ['png', 'svg'], 'Image formats: png, svg.')
_RAW = flags.DEFINE_bool('raw', False, 'Heatmap of the raw alphas instead of their softmax.')


def _stem(path: str) -> str:
  """A file name for a path: its stem, or its folder's name for a workdir's standard file."""
  path = os.path.abspath(os.path.expanduser(path))
  stem = os.path.splitext(os.path.basename(path))[0]
  return os.path.basename(os.path.dirname(path)) if stem in ('genotype', 'alphas') else stem


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # jax / matplotlib log their start-up at INFO
  if not _GENOTYPE.value and not _ALPHAS.value:
    raise app.UsageError('nothing to plot: pass --genotype=NAME|PATH and/or --alphas=PATH')
  from dnas.cells import known_genotypes
  from dnas.genotype import GenotypeError
  from dnas.trainers import plot
  written = []
  try:
    for g in _GENOTYPE.value:
      geno = known_genotypes.resolve(g)
      label = known_genotypes.label(g)
      name = label if label == g and os.sep not in g else _stem(g)
      written += plot.plot_genotype(geno, os.path.join(_OUT_DIR.value, f'cells_{name}'),
                                    title=label, formats=_FORMATS.value)
    for path in _ALPHAS.value:
      written += plot.plot_alpha_history(path, os.path.join(_OUT_DIR.value,
                                                            f'alphas_{_stem(path)}'),
                                         raw=_RAW.value, formats=_FORMATS.value)
  except (ImportError, ValueError, FileNotFoundError, GenotypeError) as e:
    print(f'dnas-plot: error: {e}', file=sys.stderr)
    sys.exit(1)
  for path in written:
    print(path)


def run():
  app.run(main)


if __name__ == '__main__':
  run()
