"""The two-tower split and data parallelism on 8 fake CPU devices (section 3.2).

A narrow AlexNet (conv 8-16-24-24-16, fc 32, 67x67 inputs) trains three steps
on several ('data', 'model') meshes; loss and parameters must equal the
one-device step. The compiled two-tower step must communicate only where the
paper's GPUs did.
"""

import collections
import functools
import math
import re

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import config_checks
from alexnet_jax import models
from alexnet_jax import parallel
from alexnet_jax import train
from alexnet_jax import optimizer
from alexnet_jax import steps
from configs import digits
from tests.conftest import set_keys

B = 16
MODEL = dict(name='alexnet', num_classes=10, input_size=67, conv_features=(8, 16, 24, 24, 16),
             fc_features=32, kernel_init='he', dropout_rate=0.5)


def _config(**model):
  config = digits.get_config()
  config.model.update(MODEL)
  config.model.update(model)
  return config


def _loop_config(**overrides):
  """The digits run with the narrow model, a few steps, centre-crop eval."""
  config = _config()
  config.batch_size = 32
  config.eval.batch_size = 128
  config.eval.ten_crop = False
  config.log_every_steps = 1
  config.async_checkpoints = False
  config.update(overrides)
  return config


def _batches(steps=3, seed=0):
  rng = np.random.default_rng(seed)
  return [{'image': rng.normal(size=(B, 67, 67, 3)).astype(np.float32),
           'label': rng.integers(0, 10, size=(B,)).astype(np.int32)} for _ in range(steps)]


@functools.lru_cache(maxsize=None)
def _setup(towers, lrn_per_tower):
  config = _config(towers=towers, lrn_per_tower=lrn_per_tower)
  model = models.create_model(config.model)
  tx = optimizer.make_optimizer(
      optimizer.Hyper(**config.optimizer), optimizer.Schedule(**config.schedule), 10, 10)
  state = jax.jit(functools.partial(steps.create_train_state, model=model, tx=tx))(
      jax.random.PRNGKey(0))
  return config, model, tx, jax.device_get(state)


def _step_fn(model, tx, mesh=None, abstract_state=None):
  step = functools.partial(steps.train_step, model=model, tx=tx, rng=jax.random.PRNGKey(1))
  if mesh is None:
    return jax.jit(step)
  shardings = parallel.state_shardings(mesh, abstract_state)
  return jax.jit(step, in_shardings=(shardings, parallel.batch_sharding(mesh)),
                 out_shardings=(shardings, parallel.replicated(mesh)))


@functools.lru_cache(maxsize=None)
def _single_device(towers, lrn_per_tower):
  """Three steps with the one-device model (its fast CPU impls: 'split', 'matmul')."""
  _, model, tx, state = _setup(towers, lrn_per_tower)
  step = _step_fn(model, tx)
  losses = []
  for batch in _batches():
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  return losses, jax.device_get(state)


@functools.lru_cache(maxsize=None)
def _compiled(mesh_shape, towers, lrn_per_tower):
  """The train step compiled for a mesh (shared by the equivalence and HLO tests)."""
  _, model, tx, state = _setup(towers, lrn_per_tower)
  mesh = parallel.make_mesh(mesh_shape, devices=jax.devices()[:np.prod(mesh_shape)])
  step = _step_fn(parallel.split_towers(model, mesh), tx, mesh, state)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _batches(1)[0])
  return step.lower(state, batch).compile(), mesh


def _on_mesh(mesh_shape, towers, lrn_per_tower):
  state = _setup(towers, lrn_per_tower)[3]
  step, mesh = _compiled(mesh_shape, towers, lrn_per_tower)
  state = jax.device_put(state, parallel.state_shardings(mesh, state))
  losses = []
  for batch in _batches():
    state, metrics = step(state, parallel.global_batch(batch, parallel.batch_sharding(mesh)))
    losses.append(float(metrics['loss']))
  return losses, state, mesh


def _assert_trees_close(got, want, rtol=1e-5):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  flat_want = jax.tree_util.tree_flatten_with_path(want)[0]
  for (path, w), g in zip(flat_want, jax.tree.leaves(got)):
    w, g = np.asarray(w), np.asarray(g)
    assert g.shape == w.shape, jax.tree_util.keystr(path)
    scale = np.abs(w[np.isfinite(w)]).max(initial=0.0)  # Elementwise, relative to the leaf.
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('mesh_shape,towers,lrn_per_tower', [
    (mesh, towers, False) for mesh in [(8, 1), (4, 2), (1, 2)] for towers in (2, 1)
] + [((1, 2), 2, True)])
@pytest.mark.slow
def test_three_steps_equal_single_device(mesh_shape, towers, lrn_per_tower):
  """Dropout on: the masks must not depend on the layout either."""
  want_losses, want = _single_device(towers, lrn_per_tower)
  losses, state, mesh = _on_mesh(mesh_shape, towers, lrn_per_tower)
  # Three different losses, and parameters that moved: the comparison is not vacuous.
  assert len(set(np.round(want_losses, 4))) == 3, want_losses
  init = _setup(towers, lrn_per_tower)[3]
  assert np.abs(want.params['fc6']['kernel'] - init.params['fc6']['kernel']).max() > 1e-4
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  _assert_trees_close(state.params, want.params)
  _assert_trees_close(state.opt_state, want.opt_state)
  # The same parameter tree, sharded: each device holds 1/model of every layer
  # but fc8's bias; fc8 is split by rows.
  m = mesh.shape['model']
  conv2 = state.params['conv2']['kernel']
  assert conv2.shape == want.params['conv2']['kernel'].shape
  assert conv2.addressable_shards[0].data.shape == conv2.shape[:3] + (conv2.shape[3] // m,)
  fc8 = state.params['fc8']['kernel']
  assert fc8.addressable_shards[0].data.shape == (fc8.shape[0] // m, fc8.shape[1])


def test_dropout_masks_do_not_depend_on_the_layout():
  """Under jit a random draw depends on the key and the global shape only, not
  on the sharding (dropout runs outside any shard_map). With
  jax_threefry_partitionable (default True in jax 0.10) each device also draws
  only its own shard's bits."""
  assert jax.config.jax_threefry_partitionable
  _, model, _, state = _setup(2, False)
  x = _batches(1)[0]['image']
  rngs = {'dropout': jax.random.PRNGKey(3)}
  apply = lambda m, p, x, train: m.apply({'params': p}, x, train=train, rngs=rngs)
  want = jax.jit(functools.partial(apply, model, train=True))(state.params, x)
  mesh = parallel.make_mesh((4, 2))
  tower_model = parallel.split_towers(model, mesh)
  params = jax.device_put(state.params, parallel.state_shardings(mesh, state.params))
  x = jax.device_put(x, parallel.batch_sharding(mesh))
  got = jax.jit(functools.partial(apply, tower_model, train=True))(params, x)
  off = jax.jit(functools.partial(apply, tower_model, train=False))(params, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  assert np.abs(np.asarray(got) - np.asarray(off)).max() > 1e-2  # Dropout is on.


# --------------------------------------------------------------------------
# Where the compiled step communicates
# --------------------------------------------------------------------------

_COLLECTIVE = re.compile(
    r'^\s*(?:ROOT )?%?\S+ = (\([^()]*\)|\S+) '
    r'(all-gather|all-reduce|reduce-scatter|collective-permute|all-to-all)(-start)?\(')


def collectives(hlo_text):
  """[(op, shape, op_name)] for every collective in compiled HLO text."""
  found = []
  for line in hlo_text.splitlines():
    m = _COLLECTIVE.match(line)
    if not m:
      continue
    assert not m.group(3), f'async collective; update the parser: {line}'
    name = re.search(r'op_name="([^"]*)"', line)
    for dims in re.findall(r'\w+\[([\d,]*)\]', m.group(1)):
      shape = tuple(int(d) for d in dims.split(',') if d)
      found.append((m.group(2), shape, name.group(1) if name else ''))
  return found


def _compiled_collectives(mesh_shape, towers, lrn_per_tower):
  return collectives(_compiled(mesh_shape, towers, lrn_per_tower)[0].as_text())


def _where(op_name):
  layer = re.findall(r'(conv\d|fc\d|reduce_window_sum|sharding_constraint)', op_name)
  return ('backward ' if 'transpose' in op_name else 'forward ') + (layer[-1] if layer else '?')


@pytest.mark.parametrize('lrn_per_tower', [False, True])
def test_two_towers_communicate_only_where_the_paper_did(lrn_per_tower):
  """Mesh (1, 2), towers=2: one tower per device, all the batch on both."""
  found = _compiled_collectives((1, 2), 2, lrn_per_tower)
  print(f'\nmesh (1, 2), towers=2, lrn_per_tower={lrn_per_tower}: collectives in the '
        'compiled train step')
  for op, shape, name in found:
    print(f'  {op:18s} {str(shape):18s} {_where(name):28s} {name[-90:]}')
  # Outside the network only scalars cross devices (loss, norms).
  assert all(op == 'all-reduce' for op, shape, _ in found if shape == ()), found
  got = collections.Counter((op, shape) for op, shape, _ in found if shape != ())
  # Geometry of the narrow model: 67 -> conv1 15 -> pool1 7 -> pool2 3 -> pool5 1.
  c2, c5, f, r = 16, 16, 32, 2  # conv2 and conv5 maps, fc units, LRN depth_radius.
  want = collections.Counter({
      ('all-gather', (B, 3, 3, c2)): 1,       # before conv3: both towers' conv2 maps
      ('all-reduce', (B, 3, 3, c2)): 1,       # ... and conv3's input gradient
      ('all-gather', (B, 1, 1, c5)): 1,       # before fc6: both towers' conv5 maps
      ('all-reduce', (B, c5)): 1,             # ... and fc6's input gradient
      ('all-gather', (B, f)): 1,              # before fc7: both towers' fc6 units
      ('all-reduce', (B, f)): 1,              # ... and fc7's input gradient
      ('all-reduce', (B, 10)): 1,             # fc8: partial logits of each tower's rows
  })
  if not lrn_per_tower:  # Windows straddling the boundary fetch r maps per side.
    want.update({('collective-permute', (B, 15, 15, r)): 4,   # conv1 LRN, fwd + bwd
                 ('collective-permute', (B, 7, 7, r)): 4})    # conv2 LRN, fwd + bwd
  assert got == want, f'unexpected: {got - want}; missing: {want - got}'


def test_one_tower_model_parallel_gathers_before_every_conv():
  """Contrast: with towers=1 conv2, conv4 and conv5 read all maps too."""
  got = collections.Counter((op, s) for op, s, _ in _compiled_collectives((1, 2), 1, False))
  for shape in [(B, 7, 7, 8), (B, 3, 3, 24)]:  # inputs of conv2; conv4 and conv5
    assert got[('all-gather', shape)] >= 1, got


def test_data_parallel_step_reduces_only_gradients_and_scalars():
  """Mesh (8, 1): an all-reduce of the parameter gradients, scalars, the
  logits gathered for the top-k error metric and the firing units' bits."""
  found = _compiled_collectives((8, 1), 2, False)
  assert all(op == 'all-reduce' for op, s, _ in found if s == ()), found
  big = [(op, s, name) for op, s, name in found if s != ()]
  metric = [(op, s) for op, s, name in big if 'top_k' in name]
  assert metric == [('all-gather', (B, 10))], big
  # The health metrics (models.firing_fraction): one bit per unit of each ReLU
  # layer, conv1..conv5 then fc6 and fc7 of the narrow model.
  health = sorted(s for op, s, name in big if 'reduce_or' in name)
  assert health == sorted([(8,), (16,), (24,), (24,), (16,), (32,), (32,)]), big
  # Every gradient element once ('split' grouped convs reduce each half apart).
  reduced = sum(math.prod(s) for op, s, name in big
                if op == 'all-reduce' and 'reduce_or' not in name)
  params = sum(np.size(p) for p in jax.tree.leaves(_setup(2, False)[3].params))
  assert reduced == params, big
  assert {op for op, _, _ in big} == {'all-reduce', 'all-gather'}, big


# --------------------------------------------------------------------------
# Checkpoints across layouts; configuration errors
# --------------------------------------------------------------------------


@pytest.mark.slow
def test_checkpoint_moves_between_layouts(tmp_path):
  config = _loop_config(num_train_steps=2, checkpoint_every_steps=2, mesh=(4, 2))
  saved = train.train_and_evaluate(config, str(tmp_path))
  assert saved.params['conv2']['kernel'].sharding.spec == P(None, None, None, 'model')
  # Restore the (4, 2) checkpoint with (8, 1) and (1, 2) shardings.
  description = ckpt_lib.describe(config, saved.params)
  for shape in [(8, 1), (1, 2)]:
    mesh = parallel.make_mesh(shape, devices=jax.devices()[:np.prod(shape)])
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          saved, parallel.state_shardings(mesh, saved))
    ckpt = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1, keep=1, use_async=False)
    restored = ckpt.restore(target, description, step=2)
    ckpt.close()
    assert restored.params['fc8']['kernel'].sharding.mesh.shape == mesh.shape
    _assert_trees_close(restored, saved, rtol=0)


def test_mesh_errors_are_clear():
  with pytest.raises(ValueError, match='needs 4 devices, but 8'):
    parallel.make_mesh((2, 2))
  with pytest.raises(ValueError, match='do not divide by 3'):
    parallel.make_mesh((-1, 3))
  with pytest.raises(ValueError, match='at most one -1'):
    parallel.make_mesh((-1, -1))
  assert dict(parallel.make_mesh((-1, 2)).shape) == {'data': 4, 'model': 2}
  mesh = parallel.make_mesh((4, 2))
  # The batch-size rule is config_checks' (one definition, checked once up front).
  problems = config_checks.validate(set_keys(_loop_config(mesh=(4, 2)), {
      'batch_size': 30, 'eval.batch_size': 6}), num_devices=8)
  assert any('batch_size=30: must divide over the 4-way data' in p for p in problems), problems
  assert any('eval.batch_size=6' in p for p in problems), problems
  assert not config_checks.validate(set_keys(_loop_config(mesh=(4, 2)), {
      'batch_size': 32, 'eval.batch_size': 32}), num_devices=8)
  assert parallel.data_shard(mesh) == (0, 1)


def test_split_towers_errors_are_clear():
  model = models.create_model(_config().model)
  with pytest.raises(ValueError, match=r'towers=2 do not split over a 4-way'):
    parallel.split_towers(model, parallel.make_mesh((2, 4)))
  with pytest.raises(ValueError, match='fc6=31, fc7=31 do not'):
    parallel.split_towers(model.clone(fc_features=31), parallel.make_mesh((4, 2)))
  with pytest.raises(ValueError, match='only AlexNet'):
    parallel.split_towers(models.Figure1Net(), parallel.make_mesh((4, 2)))
  assert parallel.split_towers(model, parallel.make_mesh((8, 1))) is model
  split = parallel.split_towers(model, parallel.make_mesh((4, 2)))
  assert split.lrn_impl == 'reduce_window' and split.tower_axis == 'model'


def test_batch_size_against_mesh_fails_before_training(tmp_path):
  config = _loop_config(batch_size=30, mesh=(-1, 2))
  with pytest.raises(ValueError, match='batch_size=30: must divide over the 4-way'):
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


class _FakeDevice:

  def __init__(self, process_index):
    self.process_index = process_index


def _fake_mesh(shape, devices_per_process):
  """A mesh-like object: devices in process order, `devices_per_process` each."""
  n = int(np.prod(shape))
  devices = np.array([_FakeDevice(i // devices_per_process) for i in range(n)],
                     dtype=object).reshape(shape)
  return type('FakeMesh', (), {'devices': devices,
                               'shape': {'data': shape[0], 'model': shape[1]}})()


@pytest.mark.parametrize('shape,per_process,want', [
    ((4, 2), 8, [(0, 1)]),                       # one host: all the batch
    ((4, 2), 2, [(0, 4), (1, 4), (2, 4), (3, 4)]),  # a tower pair per host
    ((8, 2), 4, [(0, 4), (1, 4), (2, 4), (3, 4)]),  # two data rows per host
    ((4, 2), 1, [(0, 4), (0, 4), (1, 4), (1, 4), (2, 4), (2, 4), (3, 4), (3, 4)]),  # a GPU each
])
def test_data_shard_per_process(monkeypatch, shape, per_process, want):
  """Which share of each global batch every process feeds. With one device per
  process (Slurm, one process per GPU) both halves of a tower pair feed the same
  examples."""
  mesh = _fake_mesh(shape, per_process)
  got = []
  for p in range(len(want)):
    monkeypatch.setattr(jax, 'process_index', lambda p=p: p)
    got.append(parallel.data_shard(mesh))
  assert got == want


def test_data_shard_rejects_ragged_process_layouts(monkeypatch):
  monkeypatch.setattr(jax, 'process_index', lambda: 0)
  with pytest.raises(ValueError, match='whole, consecutive data rows'):
    parallel.data_shard(_fake_mesh((3, 2), 4))  # process 0: rows 0-1, process 1: row 2


def test_distributed_env_is_checked(monkeypatch):
  for k in ('ALEXNET_COORDINATOR', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE',
            'TPU_WORKER_HOSTNAMES', 'ALEXNET_DISTRIBUTED'):
    monkeypatch.delenv(k, raising=False)
  parallel.maybe_initialize_distributed()  # Nothing asks for it: a no-op.
  assert jax.process_count() == 1
  monkeypatch.setenv('ALEXNET_COORDINATOR', '127.0.0.1:1234')
  monkeypatch.setenv('ALEXNET_PROCESS_ID', '0')
  with pytest.raises(ValueError, match='ALEXNET_NUM_PROCESSES is not'):
    parallel.maybe_initialize_distributed()
