"""Network health (issue 17): the firing fraction of each ReLU layer, logged by
the train step, and the initialization switches bias_init and init_std
(section 5; Caffe's bvlc_alexnet).

The fractions are checked against a float64 NumPy count of the same batch
(tests/numpy_alexnet.py's layers), on a tiny AlexNet at 67x67.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import config_checks
from alexnet_jax import models
from configs import ilsvrc
from tests import numpy_alexnet as ref

SIZE = 67   # alexnet_tiny at 67x67: conv1 15x15, pool5 1x1.
LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7')
CAFFE_STD = (0.01, 0.01, 0.01, 0.01, 0.01, 0.005, 0.005, 0.01)


def _steps_and_optimizer():
  """train_step's module and make_optimizer's (alexnet_jax.train before issue 19's split)."""
  try:
    from alexnet_jax import optimizer, steps  # pylint: disable=g-import-not-at-top
    return steps, optimizer
  except ImportError:
    from alexnet_jax import train  # pylint: disable=g-import-not-at-top
    return train, train


def _tiny(**kw):
  return models.PRESETS['alexnet_tiny'](input_size=SIZE, dropout_rate=0.0, **kw)


def _shapes(model):
  x = jnp.zeros((1, SIZE, SIZE, 3))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x))['params']


def _params(model, seed=0):
  """Kernels N(0, 2/fan_in), biases N(-0.5, 1): some units of every layer dead."""
  rng = np.random.default_rng(seed)

  def draw(path, s):
    if path[-1].key == 'kernel':
      return rng.normal(0, np.sqrt(2 / np.prod(s.shape[:-1])), s.shape).astype(np.float32)
    return rng.normal(-0.5, 1.0, s.shape).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, _shapes(model))


def _numpy_relu_outputs(params, images):
  """Each ReLU layer's float64 output (before LRN, pooling, dropout) and its
  pre-activation, as the paper's layers compute them (tests/numpy_alexnet.py)."""
  p = {n: {k: np.asarray(v, np.float64) for k, v in layer.items()} for n, layer in params.items()}
  pre, out = {}, {}

  def relu(name, z):
    pre[name], out[name] = z, ref.relu(z)
    return out[name]
  x = np.asarray(images, np.float64)
  x = ref.max_pool(ref.lrn(relu('conv1', ref.conv2d(x, **p['conv1'], stride=4)), groups=2))
  x = ref.max_pool(ref.lrn(relu('conv2', ref.conv2d(x, **p['conv2'], padding=2, groups=2)),
                           groups=2))
  x = relu('conv3', ref.conv2d(x, **p['conv3'], padding=1))
  x = relu('conv4', ref.conv2d(x, **p['conv4'], padding=1, groups=2))
  x = ref.max_pool(relu('conv5', ref.conv2d(x, **p['conv5'], padding=1, groups=2)))
  x = relu('fc6', ref.dense(x.reshape(x.shape[0], -1), p['fc6']))
  relu('fc7', ref.dense(x, p['fc7']))
  return pre, out


def _numpy_fraction(y):
  """Units (last axis) > 0 for at least one example and position, counted in NumPy."""
  y = y.reshape(-1, y.shape[-1])
  return sum(1 for unit in range(y.shape[1]) if (y[:, unit] > 0).any()) / y.shape[1]


@pytest.fixture(scope='module')
def train_step_metrics():
  """(params, images, labels) -> the metrics of one jitted train step of _tiny()
  from those params (compiled once for the module)."""
  steps, optimizer = _steps_and_optimizer()
  model = _tiny()
  config = ilsvrc.get_config()
  tx = optimizer.make_optimizer(
      optimizer.Hyper(**config.optimizer), optimizer.Schedule(**config.schedule), 10, 10)
  state = jax.eval_shape(lambda: steps.create_train_state(jax.random.key(0), model, tx))
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx,
                                   rng=jax.random.key(1)))

  def run(params, images, labels):
    s = state.replace(params=params, opt_state=tx.init(params), step=np.int32(0),
                      plateau={})
    return jax.device_get(step(s, {'image': images, 'label': labels})[1])
  return run


@pytest.fixture(scope='module')
def batch():
  rng = np.random.default_rng(1)
  images = rng.normal(0, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
  return images, np.array([0, 1, 2, 3], np.int32)


# --------------------------------------------------------------------------
# firing_fraction
# --------------------------------------------------------------------------


def test_firing_fraction_by_hand():
  # (B=2, positions=2, C=4): unit 0 fires once, unit 1 never (0 is not > 0),
  # unit 2 everywhere, unit 3 only negative: 2 of 4 fire.
  x = np.array([[[1.0, 0.0, 2.0, -1.0], [0.0, 0.0, 3.0, -2.0]],
                [[0.0, 0.0, 1.0, -3.0], [0.0, 0.0, 5.0, -1.0]]], np.float32)
  assert float(models.firing_fraction(x)) == 0.5
  assert float(models.firing_fraction(np.zeros((3, 7), np.float32))) == 0.0
  assert float(models.firing_fraction(np.full((1, 2, 2, 5), 1e-30, np.float32))) == 1.0


def test_train_step_firing_equals_numpy_count(batch, train_step_metrics):
  images, labels = batch
  params = _params(_tiny())
  metrics = train_step_metrics(params, images, labels)
  pre, out = _numpy_relu_outputs(jax.device_get(params), images)
  fractions = {}
  for name in LAYERS:
    # No unit sits so close to 0 that float32 and float64 could disagree.
    peak = pre[name].reshape(-1, pre[name].shape[-1]).max(axis=0)
    assert np.abs(peak).min() > 1e-3, name
    fractions[name] = _numpy_fraction(out[name])
    assert float(metrics[f'firing_{name}']) == pytest.approx(fractions[name], abs=1e-6), name
  # The batch tells layers apart: some fractions are partial.
  assert any(0 < f < 1 for f in fractions.values()), fractions


def test_dead_fc7_reads_zero(batch, train_step_metrics):
  images, labels = batch
  # Small weights N(0, 0.01^2) and biases 1, as at the start of training; then
  # fc7's biases at -10.
  rng = np.random.default_rng(2)
  params = jax.tree_util.tree_map_with_path(
      lambda path, s: (rng.normal(0, 0.01, s.shape) if path[-1].key == 'kernel'
                       else np.ones(s.shape)).astype(np.float32), _shapes(_tiny()))
  params['fc7']['bias'] = np.full_like(params['fc7']['bias'], -10.0)
  metrics = train_step_metrics(params, images, labels)
  assert float(metrics['firing_fc7']) == 0.0
  assert float(metrics['firing_fc6']) == 1.0   # The paper's biases 1: all fire.
  assert all(0 < float(metrics[f'firing_{n}']) <= 1 for n in LAYERS[:-1])


def test_health_is_not_collected_unless_asked(batch):
  images, _ = batch
  model = _tiny()
  params = _params(model)
  out = model.apply({'params': params}, images)
  assert isinstance(out, jax.Array)   # Plain apply: logits only, nothing sown.
  _, health = model.apply({'params': params}, images, mutable=['health'])
  assert sorted(models.firing_metrics(health)) == sorted(f'firing_{n}' for n in LAYERS)


# --------------------------------------------------------------------------
# bias_init and init_std (section 5; Caffe's bvlc_alexnet)
# --------------------------------------------------------------------------


@pytest.mark.parametrize('bias_init,init_std', [(1.0, (0.02,)), (0.1, CAFFE_STD)])
def test_init_switches(bias_init, init_std):
  model = models.create_model({'name': 'alexnet_tiny', 'input_size': SIZE,
                               'bias_init': bias_init, 'init_std': init_std})
  params = jax.device_get(jax.jit(model.init)(jax.random.key(0),
                                              jnp.zeros((1, SIZE, SIZE, 3)))['params'])
  stds = init_std if len(np.atleast_1d(init_std)) == 8 else (np.ravel(init_std)[0],) * 8
  for name, std in zip(models.WEIGHT_LAYERS, stds):
    w = params[name]['kernel'].astype(np.float64).ravel()
    assert abs(w.std() / std - 1) < 6 / np.sqrt(2 * w.size), name
    want = bias_init if name in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7') else 0.0
    np.testing.assert_array_equal(params[name]['bias'], np.float32(want), err_msg=name)


def test_layer_stds():
  assert models.layer_stds(0.01) == dict.fromkeys(models.WEIGHT_LAYERS, 0.01)
  assert models.layer_stds((0.005,)) == dict.fromkeys(models.WEIGHT_LAYERS, 0.005)
  assert models.layer_stds(CAFFE_STD)['fc6'] == 0.005
  assert models.layer_stds(CAFFE_STD)['fc8'] == 0.01


def test_bad_init_std_is_a_config_problem():
  config = ilsvrc.get_config()
  config.model.init_std = (0.01, 0.01)
  with pytest.raises(ValueError, match=r'init_std must be one positive std or 8'):
    config_checks.check(config, num_devices=1)
  config.model.init_std = (0.01,) * 7 + (-0.01,)
  with pytest.raises(ValueError, match='init_std'):
    models.create_model(config.model)


def test_other_presets_take_the_ilsvrc_config_init_keys():
  # configs/ilsvrc.py's init keys, unset (None: AlexNet's defaults), give way to
  # presets that have no such fields; any value set is refused, named (issue 25:
  # the paper's 1.0 and the shipped 0.1 too, no reconciliation).
  config = ilsvrc.get_config()
  config.model.name = 'torchvision'
  assert isinstance(models.create_model(config.model), models.TorchvisionAlexNet)
  for value in (1.0, 0.1, 0.5):
    config.model.bias_init = value
    with pytest.raises(ValueError, match=r"\['bias_init'\].*'torchvision'"):
      models.create_model(config.model)
