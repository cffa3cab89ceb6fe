"""Shared fixtures: float64 for numerical checks, one mnist5k data dir per session, and a
persistent XLA cache so that tests compiling the same network share the compile."""
import os

import jax
import pytest


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
