"""Device mesh, shardings and multi-host setup (section 3.2's two GPUs, today).

Mesh axes are ('data', 'model'): `data` replicates the model for data
parallelism, `model` = 2 puts one tower on each device.
"""

import math
import os
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA, MODEL = 'data', 'model'


def maybe_initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` when the environment asks for it.

  Slurm (SLURM_NTASKS > 1), Open MPI and Cloud TPU VMs are auto-detected by
  JAX itself; ALEXNET_COORDINATOR / ALEXNET_NUM_PROCESSES / ALEXNET_PROCESS_ID
  give explicit values (e.g. several processes on one machine).
  """
  if os.environ.get('ALEXNET_COORDINATOR'):
    if jax.default_backend() == 'cpu' or os.environ.get('JAX_PLATFORMS', '') == 'cpu':
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
        coordinator_address=os.environ['ALEXNET_COORDINATOR'],
        num_processes=int(os.environ['ALEXNET_NUM_PROCESSES']),
        process_id=int(os.environ['ALEXNET_PROCESS_ID']))
  elif int(os.environ.get('SLURM_NTASKS', '1')) > 1 or os.environ.get('TPU_WORKER_HOSTNAMES'):
    jax.distributed.initialize()
  else:
    return
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def make_mesh(mesh_shape: Sequence[int], devices=None) -> Mesh:
  """A ('data', 'model') mesh; one -1 entry means "all remaining devices"."""
  devices = jax.devices() if devices is None else devices
  shape = list(mesh_shape)
  if len(shape) != 2:
    raise ValueError(f'config.mesh must be (data, model), got {tuple(mesh_shape)}.')
  if shape.count(-1) > 1:
    raise ValueError(f'config.mesh may have at most one -1, got {tuple(mesh_shape)}.')
  if -1 in shape:
    rest = math.prod(s for s in shape if s != -1)
    if len(devices) % rest:
      raise ValueError(f'config.mesh={tuple(mesh_shape)}: {len(devices)} devices do not '
                       f'divide by {rest}.')
    shape[shape.index(-1)] = len(devices) // rest
  if math.prod(shape) != len(devices):
    raise ValueError(f'config.mesh={tuple(mesh_shape)} needs {math.prod(shape)} devices, '
                     f'but {len(devices)} are available; set --config.mesh="(-1, {shape[1]})".')
  # Auto axes: the compiler propagates shardings from the inputs' and
  # parameters' annotations (GSPMD-style) rather than tracing them in types.
  return jax.make_mesh(tuple(shape), (DATA, MODEL), devices=devices,
                       axis_types=(AxisType.Auto, AxisType.Auto))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch axis split over `data`, replicated over `model`."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
  """Shardings for the train state (replicated: data parallelism only)."""
  return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  n = mesh.shape[DATA] * jax.process_count() // jax.process_count()
  if batch_size % mesh.shape[DATA]:
    raise ValueError(f'batch_size={batch_size} does not divide over the {n}-way '
                     f'data axis of mesh {dict(mesh.shape)}.')
  if batch_size % jax.process_count():
    raise ValueError(f'batch_size={batch_size} does not divide over '
                     f'{jax.process_count()} processes.')


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """Per-process numpy batch -> one global jax.Array per key."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)
