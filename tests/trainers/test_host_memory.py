"""trainers/host_memory.py: the freed heap goes back to the OS; CompileFirst computes what
the jitted function computes, tracing it once."""
import ctypes.util
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas.trainers import host_memory

_GLIBC = ctypes.util.find_library('c') is not None and 'glibc' in (
    ' '.join(__import__('platform').libc_ver()))


@pytest.mark.skipif(not _GLIBC, reason='malloc_trim is a glibc call')
def test_release_returns_a_fragmented_heap_to_the_os():
  # In a fresh process: 200 MB of 4 KB blocks, all freed but the last one, which pins the
  # top of the heap so that free() itself cannot shrink it (the compiler's pattern).
  script = textwrap.dedent('''
      import ctypes
      from dnas.trainers import host_memory
      libc = ctypes.CDLL(None)
      libc.malloc.restype = ctypes.c_void_p
      libc.free.argtypes = [ctypes.c_void_p]
      def rss_mb():
        return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
      blocks = []
      for _ in range(50_000):
        p = libc.malloc(4096)
        ctypes.memset(p, 1, 4096)
        blocks.append(p)
      for p in blocks[:-1]:
        libc.free(p)
      before = rss_mb()
      released = host_memory.release_freed_memory()
      print(before, rss_mb(), released)
  ''')
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                       check=True).stdout.split()
  before, after, released = float(out[0]), float(out[1]), out[2]
  assert released == 'True'
  assert before - after > 150, (before, after)  # of the ~195 MB freed


def test_compile_first_matches_jit_and_traces_once():
  traces = []

  def f(x, y):
    traces.append(1)
    return jnp.tanh(x) @ y, jnp.sum(x * y)

  step = host_memory.CompileFirst(jax.jit(f))
  reference = jax.jit(lambda x, y: (jnp.tanh(x) @ y, jnp.sum(x * y)))
  rng = np.random.default_rng(0)
  for _ in range(3):
    x, y = (rng.standard_normal((4, 4), np.float32) for _ in range(2))
    got, want = step(x, y), reference(x, y)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
  assert len(traces) == 1
  with pytest.raises(Exception):  # compiled for one shape: another is an error, not a retrace
    step(np.zeros((3, 3), np.float32), np.zeros((3, 3), np.float32))


def test_compile_first_can_drop_jax_trace_caches():
  # With drop_trace_caches the trace caches are cleared between lowering and compiling:
  # the step still computes what jit computes, and a function jitted earlier traces again.
  traces = []

  def g(x):
    traces.append(1)
    return x * 2.0

  other = jax.jit(g)
  x = np.arange(4, dtype=np.float32)
  other(x)
  other(x)
  assert len(traces) == 1  # cached
  step = host_memory.CompileFirst(jax.jit(lambda a: jnp.cumsum(a) ** 2), drop_trace_caches=True)
  np.testing.assert_allclose(step(x), np.cumsum(x) ** 2)
  np.testing.assert_allclose(step(x + 1), np.cumsum(x + 1) ** 2)  # compiled once, reused
  np.testing.assert_allclose(other(x), 2 * x)
  assert len(traces) == 2  # the earlier trace was dropped
