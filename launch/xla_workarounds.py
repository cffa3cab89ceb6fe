"""XLA flags that work around known compiler bugs, set before any backend starts.

XLA's GPU compiler (jax 0.11.2, H100) aborts on the search step in its Triton GEMM fusion
(`triton_tiling_propagation.cc:703 Check failed: subdim_size_accumulator == dim_size`);
without Triton GEMMs it compiles and runs (docs/design.md). The flag means nothing on CPU.
A user's own XLA_FLAGS are kept; one that sets the same flag wins.
"""
import os

FLAGS = ('--xla_gpu_enable_triton_gemm=false',)


def apply() -> None:
  current = os.environ.get('XLA_FLAGS', '')
  extra = [f for f in FLAGS if f.split('=')[0] not in current]
  if extra:
    os.environ['XLA_FLAGS'] = ' '.join([current, *extra]).strip()
