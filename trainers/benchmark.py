"""Benchmark a genotype's stand-alone network on whatever device JAX sees.

`benchmark(genotype, ...)` builds the network of a DARTS genotype (CIFAR or ImageNet network)
or of an NAS-Bench-201 arch string (cells/standalone.py), in eval mode (no auxiliary head,
no drop-path), compiles its forward pass and measures:

  params            trainable parameters without the auxiliary head (the papers' figure)
  flops_xla         XLA's cost analysis of the compiled batch-1 forward pass
  flops_analytic    2 x the conv / linear multiply-adds counted from the architecture in the
                    same convention (the compiled conv form, padding taps free); XLA also
                    counts elementwise ops (BN, ReLU, adds, pools), so xla/analytic is a
                    little above 1 and falls towards 1 as the channels grow
  macs_paper        the papers' multiply-adds: DARTS, textbook separable convs with every
                    tap; NB201, NAS-Bench-201's counter (every conv tap, classifier + bias)
  compile_s         lowering + compilation of the batch-1 forward pass
  latency_ms        batch 1, median and 90th percentile over `repeats` runs
  throughput        images/s at `batch`, from the median of `repeats` runs
  memory            peak RSS of this process (CPU) or the device's peak bytes in use, and
                    XLA's own estimate for the batch-`batch` executable (arguments + temps)
"""
import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dnas.cells import standalone

NETWORKS = {
    # name: (default channels, layers (DARTS: cells; NB201: cells per stage N), image size,
    #        classes), the papers' settings
    'cifar': (36, 20, 32, 10),
    'imagenet': (48, 14, 224, 1000),
    'nb201': (16, 5, 32, 10),
}


def build(arch: standalone.Arch, network: str | None = None, *, channels: int | None = None,
          layers: int | None = None, image_size: int | None = None,
          num_classes: int | None = None, conv_form: str = 'auto', seed: int = 0):
  """(model, network, image size): the network from NETWORKS, defaults from the papers.
  `layers` is the number of cells (DARTS) or cells per stage N (NB201)."""
  network = network or arch.default_network()
  if network not in NETWORKS:
    raise ValueError(f'unknown network {network!r}; valid: {", ".join(NETWORKS)}')
  standalone.check_network(arch, network)
  c, n, size, classes = NETWORKS[network]
  size = image_size or size
  model = standalone.build(arch, network, num_classes=num_classes or classes, in_channels=3,
                           image_size=size, channels=channels or c, layers=layers or n,
                           cells_per_stage=layers or n, conv_form=conv_form, seed=seed)
  return model, network, size


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0]
  return cost or {}


def _time_runs(fn, state, x, repeats: int) -> list[float]:
  jax.block_until_ready(fn(state, x))  # warm-up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(state, x))
    times.append(time.perf_counter() - t)
  return times


def host_cpu() -> str:
  """The host's CPU model and core count (what a CPU benchmark ran on)."""
  model = ''
  try:
    with open('/proc/cpuinfo') as f:
      model = next((line.split(':', 1)[1].strip() for line in f
                    if line.startswith('model name')), '')
  except OSError:
    pass
  return f'{model or "unknown CPU"}, {os.cpu_count()} cores'


def peak_memory_bytes() -> tuple[int, str]:
  """(bytes, what): the device's peak bytes in use where it reports them (GPU, TPU), else
  this process's peak resident set size (CPU: the arrays live in host memory)."""
  stats = None
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 -- not every backend implements memory_stats
    pass
  if stats and 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device peak_bytes_in_use'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'process peak RSS'


def benchmark(genotype: str, *, network: str | None = None, channels: int | None = None,
              layers: int | None = None, image_size: int | None = None,
              num_classes: int | None = None, batch: int = 64, repeats: int = 20,
              conv_form: str = 'auto', seed: int = 0) -> dict:
  """`genotype`: a known DARTS name, a genotype.json (either space) or an NB201 arch string;
  `network` defaults to the space's (DARTS: cifar, NB201: nb201)."""
  arch = standalone.resolve(genotype)
  model, network, size = build(arch, network, channels=channels, layers=layers,
                               image_size=image_size, num_classes=num_classes,
                               conv_form=conv_form, seed=seed)
  in_channels = standalone.in_channels_of(model)
  params = standalone.num_params(model)
  forms = standalone.conv_forms(model)
  flops_analytic = standalone.analytic_flops(model, 1, (size, size))
  macs_paper = standalone.paper_macs(model, 1, (size, size))
  graphdef, state = nnx.split(model)
  del model

  @jax.jit
  def forward(state, x):
    return nnx.merge(graphdef, state)(x, train=False)[0]

  rng = np.random.default_rng(seed)
  x1 = jax.device_put(rng.standard_normal((1, size, size, in_channels), np.float32))
  xb = jax.device_put(rng.standard_normal((batch, size, size, in_channels), np.float32))

  t0 = time.perf_counter()
  compiled1 = forward.lower(state, x1).compile()
  compile_s = time.perf_counter() - t0
  flops_xla = float(_cost(compiled1).get('flops', float('nan')))
  latency = np.asarray(_time_runs(compiled1, state, x1, repeats)) * 1e3

  t0 = time.perf_counter()
  compiled_b = forward.lower(state, xb).compile()
  compile_batch_s = time.perf_counter() - t0
  batch_times = _time_runs(compiled_b, state, xb, max(3, repeats // 4))
  xla_mem = None
  try:
    m = compiled_b.memory_analysis()
    xla_mem = int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)
  except Exception:  # noqa: BLE001 -- optional in some backends
    pass
  peak, peak_kind = peak_memory_bytes()
  device = jax.devices()[0]
  return {
      'genotype': arch.label, 'space': arch.space,
      'network': network, 'channels': channels or NETWORKS[network][0],
      'layers': layers or NETWORKS[network][1], 'image_size': size,
      'params': params,
      'flops_xla': flops_xla, 'flops_analytic': flops_analytic,
      'flops_xla_over_analytic': round(flops_xla / flops_analytic, 4),
      'macs_paper': macs_paper,
      'compile_s': round(compile_s, 2), 'compile_batch_s': round(compile_batch_s, 2),
      'latency_ms_median': round(float(np.median(latency)), 3),
      'latency_ms_p90': round(float(np.percentile(latency, 90)), 3),
      'batch': batch,
      'throughput_img_s': round(batch / statistics.median(batch_times), 1),
      'peak_memory_bytes': peak, 'peak_memory_kind': peak_kind,
      'xla_memory_bytes_batch': xla_mem,
      'repeats': repeats, 'conv_form': conv_form, 'conv_forms_used': forms,
      'backend': jax.default_backend(), 'device': device.device_kind, 'host': host_cpu(),
      'jax': jax.__version__,
  }


def network_label(r: dict) -> str:
  cells = (f'N={r["layers"]}' if r['network'] == 'nb201' else f'{r["layers"]} cells')
  return f'{r["network"]} C={r["channels"]} {cells} {r["image_size"]}px'


ROWS = (('network', 'network', None),
        ('params', 'params', lambda v: f'{v / 1e6:.3f} M'),
        ('macs (paper)', 'macs_paper', lambda v: f'{v / 1e6:.1f} M'),
        ('FLOPs XLA, b=1', 'flops_xla', lambda v: f'{v / 1e6:.1f} M'),
        ('FLOPs analytic', 'flops_analytic', lambda v: f'{v / 1e6:.1f} M'),
        ('XLA / analytic', 'flops_xla_over_analytic', lambda v: f'{v:.3f}'),
        ('compile b=1', 'compile_s', lambda v: f'{v:.1f} s'),
        ('latency b=1 median', 'latency_ms_median', lambda v: f'{v:.2f} ms'),
        ('latency b=1 p90', 'latency_ms_p90', lambda v: f'{v:.2f} ms'),
        ('throughput', 'throughput_img_s', lambda v: f'{v:.1f} img/s'),
        ('peak memory', 'peak_memory_bytes', lambda v: f'{v / 2**20:.0f} MiB'),
        ('XLA memory, batch', 'xla_memory_bytes_batch',
         lambda v: '-' if v is None else f'{v / 2**20:.0f} MiB'),
        ('device', 'device', str))


def table(results: list[dict]) -> str:
  """The results side by side: one column per genotype."""
  if not results:
    return ''
  r0 = results[0]
  header = ['', *[r['genotype'] for r in results]]
  rows = [header]
  for label, key, fmt in ROWS:
    if key == 'throughput_img_s':
      label = f'throughput b={r0["batch"]}'
    rows.append([label, *[fmt(r[key]) if fmt else network_label(r) for r in results]])
  widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
  lines = ['  '.join(cell.ljust(w) if i == 0 else cell.rjust(w)
                     for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
  lines.insert(1, '-' * len(lines[0]))
  forms = sorted({f for r in results for f in r['conv_forms_used']})
  note = (f'conv form {r0["conv_form"]} ({"/".join(forms) or "no convs"}); '
          f'{r0["backend"]} on {r0["host"]}, jax {r0["jax"]}; peak memory: '
          f'{r0["peak_memory_kind"]}; macs (paper): DARTS textbook separable convs, NB201 '
          f'NAS-Bench-201\'s counter')
  return '\n'.join(lines + [note])
