"""dnas-plot: a genotype's cells as images, and a search's alphas over the epochs.

    dnas-plot --genotype=DARTS_V2 --out_dir=/tmp/plots          # cells_DARTS_V2.{png,svg}
    dnas-plot --genotype=/tmp/dnas_default/genotype.json          # cells_dnas_default.{png,svg}
    dnas-plot --genotype='|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|nor_conv_3x3~2|'
                                          # an NB201 cell: cells_nb201_c3_none_pool_none_c3_c3.*
    dnas-plot --genotype=/tmp/dnas_nb201/genotype.json --alphas=/tmp/dnas_nb201/alphas.jsonl
    dnas-plot --alphas=/tmp/dnas_default/alphas.jsonl             # alphas_dnas_default.{png,svg}

Needs matplotlib: pip install 'dnas[plot]'.
"""
import os
import sys

from absl import app, flags, logging

_GENOTYPE = flags.DEFINE_multi_string('genotype', [], 'Known genotype name, NAS-Bench-201 '
                                      'arch string or genotype.json path (repeatable).')
_ALPHAS = flags.DEFINE_multi_string('alphas', [], 'A search\'s alphas.jsonl (repeatable).')
_OUT_DIR = flags.DEFINE_string('out_dir', '.', 'Where the images go.')
_FORMATS = flags.DEFINE_list('formats', ['png', 'svg'], 'Image formats: png, svg.')
_RAW = flags.DEFINE_bool('raw', False, 'Heatmap of the raw alphas instead of their softmax.')


def _stem(path: str) -> str:
  """A file name for a path: its stem, or its folder's name for a workdir's standard file."""
  path = os.path.abspath(os.path.expanduser(path))
  stem = os.path.splitext(os.path.basename(path))[0]
  return os.path.basename(os.path.dirname(path)) if stem in ('genotype', 'alphas') else stem


_SHORT = {'none': 'none', 'skip_connect': 'skip', 'nor_conv_1x1': 'c1', 'nor_conv_3x3': 'c3',
          'avg_pool_3x3': 'pool'}


def _arch_name(arch: str) -> str:
  """A file name for an NB201 arch string: its 6 ops, abbreviated, in edge order."""
  from dnas import nb201_string
  return 'nb201_' + '_'.join(_SHORT[op] for op in nb201_string.parse(arch))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # jax / matplotlib log their start-up at INFO
  if not _GENOTYPE.value and not _ALPHAS.value:
    raise app.UsageError('nothing to plot: pass --genotype=NAME|PATH and/or --alphas=PATH')
  from dnas.cells import standalone
  from dnas.genotype import GenotypeError
  from dnas.trainers import plot
  written = []
  try:
    for g in _GENOTYPE.value:
      arch = standalone.resolve(g)
      if arch.space == 'nb201':
        from_file = os.path.isfile(os.path.expanduser(g))
        name = _stem(g) if from_file else _arch_name(g)
        title = f'{g}\n{arch.genotype}' if from_file else arch.genotype
        written += plot.plot_nb201_cell(arch.genotype, os.path.join(
            _OUT_DIR.value, f'cells_{name}'), title=title, formats=_FORMATS.value)
        continue
      label = arch.label
      name = label if label == g and os.sep not in g else _stem(g)
      written += plot.plot_genotype(arch.genotype, os.path.join(_OUT_DIR.value, f'cells_{name}'),
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
