"""Data parallelism from one CPU to a multi-host TPU slice: one mesh, one rule.

The batch is split over a 1-D mesh axis 'data' (batch axis 0 of every batch array); the
weights, alphas, batch statistics and optimizer states are replicated. Under `jax.jit` the
compiler inserts the all-reduces, so a mean over the batch (the loss, BN statistics) is a mean
over the global batch: N devices compute what one device computes on the same global batch.

Several hosts: each process reads only its share of the global batch (`shard_index` says
which rows), and `global_batch` assembles the processes' shares into one global array with
`jax.make_array_from_process_local_data`. Everything here is a no-op-equivalent on one
device: the default (`mesh.data = -1`, all devices) on a 1-CPU machine runs the program the
search ran before meshes existed.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def initialize_distributed(coordinator_address: str = '', num_processes: int = 0,
                           process_id: int = -1, multihost: bool = False) -> bool:
  """Joins this process to a multi-process run, before any JAX computation.

  Explicit flags (or the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
  environment variables) join processes anywhere, e.g. two local CPU processes;
  `multihost=True` lets JAX detect the cluster itself (Cloud TPU VM workers, SLURM, GKE).
  Neither: a single process, nothing to do. Returns whether the runtime was initialized."""
  address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS', '')
  if address:
    num = num_processes or int(os.environ.get('JAX_NUM_PROCESSES', '0'))
    pid = process_id if process_id >= 0 else int(os.environ.get('JAX_PROCESS_ID', '-1'))
    if num <= 0 or pid < 0:
      raise ValueError(f'a coordinator address ({address}) needs the number of processes and '
                       'this process\'s id: pass --num_processes and --process_id (or set '
                       'JAX_NUM_PROCESSES and JAX_PROCESS_ID)')
    jax.distributed.initialize(address, num, pid)
    return True
  if multihost:
    jax.distributed.initialize()  # cluster auto-detection (Cloud TPU metadata, SLURM, ...)
    return True
  return False


def is_main_process() -> bool:
  """Process 0 logs, shows progress and writes the result files; every process computes."""
  return jax.process_index() == 0


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """The mesh and the two shardings the trainers use, plus this process's share of a batch."""
  mesh: Mesh

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def batch(self) -> NamedSharding:
    """Axis 0 (the batch axis of each batch array) split over 'data'."""
    return NamedSharding(self.mesh, P(DATA_AXIS))

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  @property
  def num_shards(self) -> int:
    """Shares of the global batch: one per process (each feeds its own devices)."""
    return jax.process_count()

  @property
  def shard_index(self) -> int:
    """Which share of the global batch this process feeds: the position of its devices'
    rows along the mesh axis (not always its process index)."""
    rows = self.batch.addressable_devices_indices_map((self.num_devices,))
    return min(index[0].start or 0 for index in rows.values()) // (
        self.num_devices // self.num_shards)

  def local_batch_size(self, global_batch_size: int, field: str = 'batch_size') -> int:
    if global_batch_size % self.num_devices:
      raise ValueError(f'config.{field}={global_batch_size} (the global batch) must be a '
                       f'multiple of the {self.num_devices} devices of the data mesh: change '
                       f'config.{field} or set config.mesh.data to a divisor of it')
    return global_batch_size // self.num_shards

  def describe(self, batch_size: int) -> str:
    """For the run's first line: '1 device' or 'batch B over N device(s)[ in P processes]'."""
    if self.num_devices == 1:
      return '1 device'
    processes = f' in {jax.process_count()} processes' if jax.process_count() > 1 else ''
    return f'batch {batch_size} over {self.num_devices} devices{processes}'

  def replicate(self, tree):
    """The state on every device (committed to the replicated sharding)."""
    return jax.device_put(tree, self.replicated)

  def global_batch(self, local_batch: dict) -> dict:
    """This process's rows of a batch -> global arrays sharded on axis 0."""
    def one(x):
      x = np.asarray(x)
      return jax.make_array_from_process_local_data(
          self.batch, x, (x.shape[0] * self.num_shards,) + x.shape[1:])
    return jax.tree.map(one, local_batch)


class NullWriter:
  """The TensorBoard writer of processes other than 0: they compute, process 0 logs."""

  def add_scalar(self, *args, **kwargs):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def make(data: int = -1) -> DataParallel:
  """A 1-D 'data' mesh over `data` devices (-1: all devices of all processes)."""
  total = jax.device_count()
  n = total if data == -1 else int(data)
  if n <= 0 or n > total:
    raise ValueError(f'config.mesh.data={data}: this run sees {total} device(s) '
                     f'({jax.devices()[0].platform}); use -1 (all) or 1..{total}')
  if n != total and jax.process_count() > 1:
    raise ValueError(f'config.mesh.data={data}: a multi-process run ({jax.process_count()} '
                     f'processes) shards over all {total} devices; use -1')
  if jax.process_count() > 1 and total % jax.process_count():
    raise ValueError(f'{total} devices over {jax.process_count()} processes: each process '
                     'needs the same number of devices')
  devices = jax.devices() if n == total else jax.local_devices()[:n]
  # Auto: the compiler propagates the batch sharding through the network (GSPMD); the
  # model code carries no sharding annotations.
  mesh = jax.make_mesh((n,), (DATA_AXIS,), (jax.sharding.AxisType.Auto,), devices=devices)
  return DataParallel(mesh)
