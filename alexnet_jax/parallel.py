"""Device mesh, the two-tower split, shardings and multi-host setup (section 3.2).

The paper split AlexNet over two GTX 580s: each GPU held one tower, half the
kernels of every layer, and "the GPUs communicate only in certain layers".
Here that is a device mesh with axes ('data', 'model'): `model` = 2 puts one
tower on each device, and `data` replicates that pair for data parallelism,
on any number of hosts (`config.mesh = (data, model)`).

Where the paper's GPUs communicated, and what the compiled step does instead
(per step; forward / backward; B = per-data-shard batch, paper sizes):

  layer       paper's GPUs                 here (collectives over 'model')
  conv1-pool1 each its own 48 maps         none; LRN: collective-permute of
                                           depth_radius maps at the boundary
                                           (lrn_per_tower=False), none if True
  conv2-pool2 own tower only (grouped)     none (shard_map over own group);
                                           LRN as above
  conv3       reads both GPUs' 256 maps    all-gather (B,13,13,256) /
                                           all-reduce of its input gradient
  conv4-pool5 own tower only               none
  fc6         reads all 9216 units         all-gather (B,6,6,256) / all-reduce
  fc7         reads all 4096 units         all-gather (B,4096) / all-reduce
  fc8         reads all 4096 units         fc8's rows split by tower:
                                           all-reduce of partial logits
                                           (B,1000) / none

The LRN halo is one collective-permute from each neighbour, forward and
backward. Over 'data' the compiler adds the all-reduce of the parameter
gradients and a gather of the logits for the top-k error metric; elsewhere only
scalars (loss, norms) are all-reduced. tests/test_parallel.py checks this list
against the compiled HLO of a narrow model; the paper-sized model on mesh
(1, 2) compiles to exactly the shapes above.

Parameters keep their one-device layout (grouped kernels in
`feature_group_count` form) and are only sharded: conv1..conv5, fc6 and fc7
on their output maps (last axis), fc8 on its input rows. A checkpoint written
on one mesh restores on any other.

Under model parallelism (`split_towers`) the model sets `mesh` on AlexNet:
grouped convolutions run under `jax.shard_map` on each device's own groups
(XLA's partitioner would all-gather a `feature_group_count` convolution), and
LRN's 'auto' implementation becomes 'reduce_window', which the compiler
partitions with a halo; the banded matmul would need every map on every device.
Dropout runs outside any shard_map, so its masks depend on the key and the
global shape only: every layout drops the same units (with
`jax_threefry_partitionable`, on by default, each device draws only its shard).
"""

import collections
import ctypes
import functools
import itertools
import os
import re
import signal
from typing import Any, Iterator, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from alexnet_jax import cli
from alexnet_jax import config_checks
from alexnet_jax import models
from alexnet_jax import preemption

DATA, MODEL = 'data', 'model'

# Layers whose kernels are split over 'model' on their output maps (last
# axis), and the one split on its input rows (fc8: see the table above).
OUTPUT_SPLIT = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7')
INPUT_SPLIT = ('fc8',)


# --------------------------------------------------------------------------
# Multi-host
# --------------------------------------------------------------------------


def _on_cloud_tpu_vm() -> bool:
  try:  # Set by `import jax` when libtpu finds TPU chips on this machine.
    from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return bool(getattr(cloud_tpu_init, 'running_in_cloud_tpu_vm', False))


def maybe_initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` when the environment asks for it.

  Explicit: ALEXNET_COORDINATOR=host:port, ALEXNET_NUM_PROCESSES and
  ALEXNET_PROCESS_ID (e.g. several processes on one machine). Found by JAX
  itself (no arguments): a Cloud TPU VM (its slice's workers, one or many),
  Slurm (SLURM_NTASKS > 1), Open MPI (OMPI_COMM_WORLD_SIZE > 1), a GKE TPU
  slice (TPU_WORKER_HOSTNAMES), or anything else JAX detects with
  ALEXNET_DISTRIBUTED=1. ALEXNET_HEARTBEAT_TIMEOUT_S overrides
  HEARTBEAT_TIMEOUT_S. Must run before anything touches a JAX device.
  """
  env = os.environ
  explicit = env.get('ALEXNET_COORDINATOR')
  auto = (int(env.get('SLURM_NTASKS', '1')) > 1
          or int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1
          or len(env.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1
          or env.get('ALEXNET_DISTRIBUTED') == '1'
          or _on_cloud_tpu_vm())
  if not explicit and not auto:
    return
  kwargs = {}
  if explicit:
    missing = [k for k in ('ALEXNET_NUM_PROCESSES', 'ALEXNET_PROCESS_ID') if k not in env]
    if missing:
      raise ValueError(f'ALEXNET_COORDINATOR is set but {", ".join(missing)} is not; set '
                       'ALEXNET_NUM_PROCESSES and ALEXNET_PROCESS_ID too.')
    kwargs = dict(coordinator_address=explicit,
                  num_processes=int(env['ALEXNET_NUM_PROCESSES']),
                  process_id=int(env['ALEXNET_PROCESS_ID']))
  # CPU collectives across processes need gloo (jax 0.10); it changes nothing
  # on GPU or TPU.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  heartbeat = int(env.get('ALEXNET_HEARTBEAT_TIMEOUT_S', HEARTBEAT_TIMEOUT_S))
  jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=heartbeat)
  _stop_on_runtime_abort()
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


# --------------------------------------------------------------------------
# A lost process (docs/faults.md, launch/README.md)
# --------------------------------------------------------------------------

# JAX's default: a process that sends no heartbeat for this long (killed,
# stopped, its host gone) is declared dead by the coordinator (process 0),
# which then stops every process (`_stop_on_runtime_abort`): the bound on how
# long survivors wait for a lost process that their collectives do not notice.
HEARTBEAT_TIMEOUT_S = 100


@functools.partial(cli.user_error, status=preemption.PREEMPTED_EXIT_CODE)
class HostLost(RuntimeError):
  """Another process of a multi-process run died or became unreachable; this
  one stops (exit status 75) so that the launcher restarts the whole job."""


# What the collectives (gloo, NCCL) and JAX's distributed runtime say when a peer is gone.
_PEER_FAILURE = re.compile(r'gloo|nccl|peer|connection|socket|unavailable|deadline|'
                           r'heartbeat|coordinat|barrier|remote process|network', re.I)


def lost_host(error: BaseException) -> Optional[HostLost]:
  """The HostLost that `error` means, or None: in a multi-process run, a
  JaxRuntimeError (in `error`'s cause chain) of a collective or the runtime
  that failed because another process is gone."""
  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    return None
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, HostLost):
      return error
    text = str(error)
    if isinstance(error, jax.errors.JaxRuntimeError) and _PEER_FAILURE.search(text):
      others = [i for i in range(jax.process_count()) if i != jax.process_index()]
      peer = re.search(r'\[([^\]]+)\]:\d+', text)  # gloo names the peer's address
      who = (f'process {others[0]}' if len(others) == 1 else
             f'the process at {peer.group(1)}' if peer else 'another process')
      first = ' '.join(text.split())[:200]
      return HostLost(
          f'Lost {who} of {jax.process_count()} (process {jax.process_index()} says: '
          f'{first}): it died, was stopped or its host went away. {preemption.resume_point()} '
          f'Stopping with exit status {preemption.PREEMPTED_EXIT_CODE}: run the same command '
          '(the launch scripts restart the job) to resume.')
    error = error.__cause__ or error.__context__
  return None


_ABORT_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int)
_abort_handlers = []  # referenced for the life of the process


def _on_runtime_abort(signum: int) -> None:
  del signum
  who = ('another process stopped sending heartbeats' if jax.process_index() == 0 else
         'lost process 0 (the coordinator), or another process stopped sending heartbeats')
  preemption.stop_now(
      f'ERROR: JAX\'s distributed runtime stopped process {jax.process_index()}: {who} '
      f'(its fatal line above says which). {preemption.resume_point()} Stopping with exit '
      f'status {preemption.PREEMPTED_EXIT_CODE}: run the same command (the launch scripts '
      'restart the job) to resume.')


def _stop_on_runtime_abort() -> None:
  """Turns the distributed runtime's abort into exit status 75.

  JAX's client aborts the process (SIGABRT, after its 'Terminating process
  because the JAX distributed service detected fatal errors' line and a C++
  stack) within a second of losing the coordinator, and on every process
  when the coordinator declares one dead (no heartbeat for
  HEARTBEAT_TIMEOUT_S). jax 0.10.2 has no hook for it: a Python
  `missed_heartbeat_callback` crashes with std::bad_cast when called
  (measured). So a C-level SIGABRT handler (ctypes; it takes the GIL from
  the aborting thread) writes one ERROR line and exits with status 75.
  """
  handler = _ABORT_HANDLER(_on_runtime_abort)
  libc = ctypes.CDLL(None)
  libc.signal.argtypes = [ctypes.c_int, _ABORT_HANDLER]
  libc.signal.restype = ctypes.c_void_p
  libc.signal(signal.SIGABRT, handler)
  _abort_handlers.append(handler)


# --------------------------------------------------------------------------
# Mesh
# --------------------------------------------------------------------------


def make_mesh(mesh_shape: Sequence[int], devices=None) -> Mesh:
  """A ('data', 'model') mesh; one -1 entry means "all remaining devices".

  Devices are laid out in process order, so a host's devices are neighbours
  on the mesh and a tower pair stays on one host whenever the host's device
  count is a multiple of the model axis. `data_shard` says which examples each
  process feeds in any case.
  """
  if devices is None:
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  shape = config_checks.mesh_shape(mesh_shape, len(devices))
  # Auto axes: the compiler propagates shardings from the inputs', parameters'
  # and activations' annotations (Explicit axes break flax's Dropout).
  return jax.make_mesh(tuple(shape), (DATA, MODEL), devices=devices,
                       axis_types=(AxisType.Auto, AxisType.Auto))


def data_shard(mesh: Mesh) -> tuple[int, int]:
  """(index, count) of this process's share of each global batch.

  A process feeds the examples of the 'data' rows its devices sit on. With one
  device per process (Slurm, one process per GPU) both processes of a model
  pair feed the same examples, so `count` can be less than `jax.process_count()`.
  """
  rows = {}
  for idx, d in np.ndenumerate(mesh.devices):
    rows.setdefault(d.process_index, set()).add(idx[0])
  mine = sorted(rows[jax.process_index()])
  n = len(mine)
  if mine != list(range(mine[0], mine[0] + n)) or mesh.shape[DATA] % n or any(
      len(r) != n for r in rows.values()):
    raise ValueError(f'Mesh {dict(mesh.shape)}: the devices of each process must cover '
                     'the same number of whole, consecutive data rows (process '
                     f'{jax.process_index()} has rows {mine}).')
  return mine[0] // n, mesh.shape[DATA] // n


# --------------------------------------------------------------------------
# The tower split (section 3.2)
# --------------------------------------------------------------------------


def split_towers(model: nn.Module, mesh: Mesh) -> nn.Module:
  """`model` with its towers split over the mesh's 'model' axis.

  Returns `model` unchanged when the axis has size 1. The parameters are the
  same either way; only where they and the activations live changes.
  """
  n = mesh.shape[MODEL]
  if n == 1:
    return model
  if not isinstance(model, models.AlexNet):
    raise ValueError(f'config.mesh has a {n}-way model axis, but only AlexNet has a tower '
                     f'split; use config.mesh=(-1, 1) for {type(model).__name__}.')
  widths = {f'conv{i + 1}': c for i, c in enumerate(model.conv_features)}
  widths['fc6'] = widths['fc7'] = model.fc_features
  bad = [f'{k}={v}' for k, v in widths.items() if v % n]
  if bad:
    raise ValueError(f'The {n}-way model axis must divide every layer width; '
                     f'{", ".join(bad)} do not.')
  if model.towers > 1 and model.towers % n:
    raise ValueError(f'towers={model.towers} do not split over a {n}-way model axis; use '
                     f'config.mesh=(-1, {model.towers}) (one tower per device) or towers=1.')
  lrn_impl = 'reduce_window' if model.lrn_impl == 'auto' else model.lrn_impl
  return model.clone(mesh=mesh, tower_axis=MODEL, lrn_impl=lrn_impl)


def param_spec(path: tuple, leaf: Any, model_size: int) -> P:
  """PartitionSpec of one parameter (or optimizer slot) from its path."""
  keys = [getattr(k, 'key', None) for k in path]
  if model_size == 1 or len(keys) < 2 or keys[-1] not in ('kernel', 'bias'):
    return P()
  layer, kind, ndim = keys[-2], keys[-1], np.ndim(leaf)
  if layer in OUTPUT_SPLIT:
    return P(*(None,) * (ndim - 1), MODEL)
  if layer in INPUT_SPLIT and kind == 'kernel':
    return P(MODEL, None)
  return P()


def state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
  """Shardings of the train state: parameters and their optimizer slots split
  by tower over 'model' (see `param_spec`), everything else replicated."""
  n = mesh.shape[MODEL]
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, param_spec(path, x, n)), abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch axis split over 'data', replicated over 'model'."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """This process's numpy batch (its `data_shard`) -> one global jax.Array per key.

  Arrays already global with this sharding (device-resident batches) pass through.
  """
  _, count = data_shard(sharding.mesh)

  def put(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(
        sharding, x, (x.shape[0] * count,) + x.shape[1:])
  return jax.tree.map(put, local_batch)


def prefetch(batches: Iterator[dict], sharding: NamedSharding, size: int) -> Iterator[dict]:
  """Global batches, transferred `size` batches ahead of the consumer.

  flax's prefetch_to_device for jit and a NamedSharding: while the device runs
  step k, batches k+1 .. k+size are already being copied (``global_batch``
  starts the transfers without waiting), so the host's work and the copy
  overlap the step (size 0 reads ahead as 1 does, once the step is dispatched).
  """
  queue = collections.deque()

  def enqueue(n):
    for batch in itertools.islice(batches, n):
      queue.append(global_batch(batch, sharding))

  enqueue(max(size, 1))
  while queue:
    yield queue.popleft()
    enqueue(1)
