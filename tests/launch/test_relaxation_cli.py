"""A user's relaxation from outside the package, through dnas-search's command line.

The file is README's example, copied out of README.md: the documented example is the one
that runs. One tiny search (1 cell, 2 steps): the relaxation is imported from the user's
file, its hyperparameter set from the command line, and the genotype comes out valid.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np

from dnas import genotype, relaxations
from dnas.cells import darts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, 'configs', 'default.py')


def readme_example() -> str:
  """The indented block of README.md that starts with '# my_relax.py'."""
  lines = open(os.path.join(ROOT, 'README.md')).read().splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith('    # my_relax.py'))
  block = []
  for line in lines[start:]:
    if line and not line.startswith('    '):
      break
    block.append(line)
  return textwrap.dedent('\n'.join(block)).strip() + '\n'


def test_readme_example_is_short_and_computes_sparsemax(tmp_path):
  code = readme_example()
  assert len(code.splitlines()) < 30
  path = tmp_path / 'my_relax.py'
  path.write_text(code)
  relaxations.load_module(str(path))
  relax = relaxations.make('sparsemax', {'temperature': 1.0})
  w = relax.weights(np.array([[1.0, 0.0, -1.0], [0.5, 0.4, -1.0]]), key=None, step=None)
  # Hand-computed projections onto the simplex.
  np.testing.assert_allclose(w, [[1.0, 0.0, 0.0], [0.55, 0.45, 0.0]], atol=1e-6)


def test_search_with_a_relaxation_registered_outside_the_package(tmp_path, tfds_dir):
  user_dir = tmp_path / 'user'
  user_dir.mkdir()
  (user_dir / 'my_relax.py').write_text(readme_example())
  workdir = tmp_path / 'w'
  cmd = [sys.executable, '-m', 'dnas.launch.search', f'--config={CONFIG}',
         f'--workdir={workdir}', f'--compilation_cache_dir={tmp_path / "cache"}',
         f'--config.data_dir={tfds_dir}', '--config.model.channels=4',
         '--config.model.layers=1', '--config.batch_size=16', '--config.steps_per_epoch=2',
         '--config.epochs=1', '--config.log_every_steps=1', '--config.checkpoint_every_steps=2',
         f'--config.relaxation_module={user_dir / "my_relax.py"}',
         '--config.relaxation=sparsemax', "--config.relaxation_args={'temperature': 2.0}"]
  env = dict(os.environ, TQDM_DISABLE='1')
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900,
                        cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'relaxation=sparsemax' in proc.stdout
  geno = genotype.load(workdir / 'genotype.json', darts.PRIMITIVES, space='darts')
  assert len(geno.reduce) == 8
  identity = open(workdir / 'experiment.json').read()
  assert '"relaxation_args.temperature": 2.0' in identity
