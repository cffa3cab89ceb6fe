"""Search-step benchmark: compile and step time of a supernet on synthetic batches.

    python -m dnas.launch.bench_search --layers=5 --channels=8 --batch=32    # small
    python -m dnas.launch.bench_search                                       # paper: 8, 16, 64
    python -m dnas.launch.bench_search --partial_channels=4 --edge_normalization --batch=256
                                                          # PC-DARTS' paper settings (K=4)
    python -m dnas.launch.bench_search --order=2 --hvp=exact                 # second order
    python -m dnas.launch.bench_search --space=nb201 --channels=8 --cells_per_stage=1
                                              # NB201 supernet at configs/nb201_default.py's size

Prints one JSON line: lower / compile / first-step seconds, median steady step seconds, peak
RSS, parameter count (weights only: the reference's count_parameters convention), backend.
Compare with ../shared/reference/step_time.py run right after it on the same idle machine.
"""
import json
import resource
import statistics
import time

from absl import app, flags

from dnas.launch import xla_workarounds

xla_workarounds.apply()  # before any JAX backend starts

_SPACE = flags.DEFINE_enum('space', 'darts', ['darts', 'nb201'], 'Search space (supernet).')
_LAYERS = flags.DEFINE_integer('layers', 8, 'Cells in the DARTS search network.')
_CELLS_PER_STAGE = flags.DEFINE_integer('cells_per_stage', 5, 'NB201: cells per stage N.')
_CHANNELS = flags.DEFINE_integer('channels', 16, 'Initial channels C.')
_BATCH = flags.DEFINE_integer('batch', 64, 'Batch size (train and val batches each).')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps after the first one.')
_ORDER = flags.DEFINE_integer('order', 1, '1: first order, 2: unrolled (second order).')
_HVP = flags.DEFINE_enum('hvp', 'finite_difference', ['finite_difference', 'exact'],
                         'Hessian-vector product of the second-order step.')
_FORM = flags.DEFINE_string('conv_form', 'auto', 'auto | folded | shift | grouped')
_PC = flags.DEFINE_integer('partial_channels', 1, 'PC-DARTS: K > 1 sends C/K channels of '
                           'every edge through the ops (cells/pcdarts.py); 1: off.')
_EDGE_NORM = flags.DEFINE_bool('edge_normalization', False, 'PC-DARTS edge normalisation '
                               '(per-edge betas, trained with the alphas).')
_SEED = flags.DEFINE_integer('seed', 2, 'Seed for weights and synthetic data.')
_PROFILE = flags.DEFINE_string('profile_dir', '', 'If set, write a jax.profiler trace of one '
                               'steady step here (TensorBoard / Perfetto).')


def main(argv):
  del argv
  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from dnas import arch, bilevel
  from dnas.cells import darts, nb201
  from dnas.state import SearchState
  from dnas.trainers import host_memory
  pcdarts = dict(partial_channels=_PC.value, edge_normalization=_EDGE_NORM.value)

  if _SPACE.value == 'nb201':  # cell BNs with batch statistics, as configs/nb201_default.py
    model = nb201.SearchNetwork(num_classes=10, in_channels=3, channels=_CHANNELS.value,
                                cells_per_stage=_CELLS_PER_STAGE.value,
                                **pcdarts, rngs=nnx.Rngs(_SEED.value))
  else:
    model = darts.SearchNetwork(num_classes=10, in_channels=3, channels=_CHANNELS.value,
                                layers=_LAYERS.value, conv_form=_FORM.value,
                                **pcdarts, rngs=nnx.Rngs(_SEED.value))
  weight_tx = bilevel.weight_optimizer(learning_rate=0.025)
  alpha_tx = bilevel.alpha_optimizer()
  graphdef, alphas, batch_stats, weights = arch.split(model)
  state = SearchState(step=jnp.zeros((), jnp.int32), weights=weights, alphas=alphas,
                      batch_stats=batch_stats, weight_opt_state=weight_tx.init(weights),
                      alpha_opt_state=alpha_tx.init(alphas),
                      rng=jax.random.key_data(jax.random.key(_SEED.value)))
  params = sum(x.size for x in jax.tree.leaves(state.weights))
  loss_fn = bilevel.classification_loss(graphdef)
  alpha_gradient = bilevel.alpha_gradient_fn(
      _ORDER.value, loss_fn=loss_fn, hvp=_HVP.value if _ORDER.value == 2 else None,
      xi=0.025 if _ORDER.value == 2 else None)
  step = jax.jit(functools.partial(bilevel.search_step, loss_fn=loss_fn, weight_tx=weight_tx,
                                   alpha_tx=alpha_tx, alpha_gradient=alpha_gradient),
                 donate_argnums=0)
  rng = np.random.default_rng(_SEED.value)

  def batch():
    return {'image': rng.standard_normal((_BATCH.value, 32, 32, 3), np.float32),
            'label': rng.integers(0, 10, _BATCH.value).astype(np.int32)}
  batches = [(batch(), batch()) for _ in range(_STEPS.value + 1)]

  c0 = time.process_time()
  t0 = time.perf_counter()
  lowered = step.lower(state, *batches[0])
  t1 = time.perf_counter()
  # As the trainers compile (trainers/host_memory.py): JAX's tracing caches dropped first,
  # the compiler's freed memory returned after.
  compiled = host_memory.compile_lowered(lowered, drop_trace_caches=True)
  del lowered
  host_memory.release_freed_memory()
  t2 = time.perf_counter()
  c2 = time.process_time()
  state, m = compiled(state, *batches[0])
  jax.block_until_ready(m)
  t3 = time.perf_counter()
  times = []
  for i, (train, val) in enumerate(batches[1:]):
    if _PROFILE.value and i == len(batches) - 2:
      jax.profiler.start_trace(_PROFILE.value)
    s = time.perf_counter()
    state, m = compiled(state, train, val)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - s)
    if _PROFILE.value and i == len(batches) - 2:
      jax.profiler.stop_trace()
  rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  print(json.dumps({
      'space': _SPACE.value,
      'layers': _LAYERS.value if _SPACE.value == 'darts' else None,
      'cells_per_stage': _CELLS_PER_STAGE.value if _SPACE.value == 'nb201' else None,
      'C': _CHANNELS.value, 'batch': _BATCH.value, 'order': _ORDER.value,
      'hvp': _HVP.value if _ORDER.value == 2 else None,
      'conv_form': _FORM.value, **pcdarts, 'backend': jax.default_backend(),
      'device': jax.devices()[0].device_kind, 'params': int(params),
      'lower_s': round(t1 - t0, 2), 'compile_s': round(t2 - t1, 2),
      'first_step_s': round(t3 - t2, 3),
      'lower_compile_first_s': round(t3 - t0, 2),
      # CPU seconds this process spent lowering + compiling: the work, without the waiting
      # that other jobs on a shared machine add to the wall time.
      'lower_compile_cpu_s': round(c2 - c0, 2),
      'median_step_s': round(statistics.median(times), 3) if times else None,
      'peak_rss_gb': round(rss_gib, 3), 'train_loss': float(m['train_loss']),
  }), flush=True)


def run():
  app.run(main)


if __name__ == '__main__':
  run()
