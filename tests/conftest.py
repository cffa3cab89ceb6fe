"""Shared fixtures: float64 for numerical checks, one mnist5k data dir per session, a
persistent XLA cache so that tests compiling the same network share the compile, and no LLVM
optimisation for the compiles of the test processes themselves (below)."""
import os

import jax
import pytest

# In-process tests compile small float64 graphs and run them a few times, so LLVM's
# optimisation is most of their cost: without it the float64 search step compiles in 10.5
# instead of 23.7 s and its steps take 0.33 instead of 0.03 s (the same HLO, so the same
# numbers up to rounding). The CPU backend reads XLA_FLAGS once, when it starts: start it here
# and put the variable back, so that the CLI runs the tests start as subprocesses (which take
# more steps and evaluate) compile with the defaults a user gets.
_XLA_FLAGS = os.environ.get('XLA_FLAGS')
os.environ['XLA_FLAGS'] = ' '.join(filter(None, [_XLA_FLAGS, '--xla_backend_optimization_level=0']))
jax.devices()
if _XLA_FLAGS is None:
  del os.environ['XLA_FLAGS']
else:
  os.environ['XLA_FLAGS'] = _XLA_FLAGS


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory, request):
  """A compilation cache dir per test module, for the CLI runs it starts
  (--compilation_cache_dir): runs of one module share their compiles."""
  return str(tmp_path_factory.mktemp(request.module.__name__.rsplit('.', 1)[-1] + '_xla_cache'))


@pytest.fixture(scope='session', autouse=True)
def _compilation_cache(tmp_path_factory):
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('xla_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  os.environ.setdefault('TQDM_DISABLE', '1')
  yield
