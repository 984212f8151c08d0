"""Tests of alexnet_jax.models against the paper (section 3) and a NumPy reference.

Hermetic and CPU-only: shapes and parameter counts come from jax.eval_shape; the
forward pass is compared with tests/numpy_alexnet.py, an independent float64
NumPy transcription of the network.
"""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import models
from alexnet_jax import summary
from tests import numpy_alexnet as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Section 3.5 / figure 2, 227x227 inputs (or 224 with conv1 padding 2).
PAPER_SHAPES = {
    'conv1': (55, 55, 96), 'pool1': (27, 27, 96),
    'conv2': (27, 27, 256), 'pool2': (13, 13, 256),
    'conv3': (13, 13, 384), 'conv4': (13, 13, 384),
    'conv5': (13, 13, 256), 'pool5': (6, 6, 256),
    'fc6': (4096,), 'fc7': (4096,), 'fc8': (1000,),
}
PAPER_LAYERS = list(PAPER_SHAPES)  # In call order.
PAPER_PARAMS = 60_965_224      # Two towers (grouped conv2, conv4, conv5).
ONE_TOWER_PARAMS = 62_378_344
TORCHVISION_PARAMS = 61_100_840


def _conv_params(k, cin, cout, groups=1):
  return k * k * cin // groups * cout + cout


def _conv_macs(hw, k, cin, cout, groups=1):
  return hw * hw * cout * k * k * cin // groups


def _abstract(model, batch_size=1):
  """(params, {layer: per-image output shape}) of ``model``, shapes only."""
  def init():
    x = jnp.zeros((batch_size, *models.input_shape(model)))
    return model.init(jax.random.key(0), x, capture_intermediates=True)
  variables = jax.eval_shape(init)
  shapes = {}
  for name, value in variables['intermediates'].items():
    if name == '__call__' or name.startswith('Dropout'):
      continue
    (out,) = value['__call__'] if isinstance(value, dict) else value
    shapes[name] = tuple(out.shape[1:])
  return variables['params'], shapes


def _count(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _images(input_size, batch_size=2, seed=0, scale=250.0):
  """Random images. With the paper's init (std 0.01), std 250 puts conv1's ReLU
  outputs in the tens to hundreds, where the LRN term alpha * sum a^2 is
  comparable to k, as in a trained network, so LRN errors show in the logits."""
  rng = np.random.default_rng(seed)
  return (scale * rng.standard_normal((batch_size, input_size, input_size, 3))
          ).astype(np.float32)


def _relu_like(shape, seed=0):
  """Post-ReLU activations in the tens to hundreds, with exact zeros."""
  rng = np.random.default_rng(seed)
  return np.maximum(rng.normal(20.0, 100.0, shape), 0.0).astype(np.float32)


def _numpy_variables(model, seed=0, kernel_std=0.01):
  """``model``'s variables drawn by NumPy: kernels N(0, kernel_std^2), biases N(0, 1).

  For tests that need some weights but not the init itself: compiling JAX's
  normal sampler costs ~1 s per layer on XLA:CPU. Nonzero biases make bias
  mistakes visible.
  """
  rng = np.random.default_rng(seed)
  params, _ = _abstract(model)
  draw = lambda path, s: (rng.normal(0, kernel_std if path[-1].key == 'kernel' else 1.0,
                                     s.shape).astype(np.float32))
  return {'params': jax.tree_util.tree_map_with_path(draw, params)}


@pytest.fixture(scope='module')
def paper_variables():
  """Real paper-init variables of AlexNet(towers=2) with the paper's biases 1
  (section 5; the model's default is 0.1); 227 and 224 share them."""
  model = models.AlexNet(bias_init=1.0)
  return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 227, 227, 3)))


def _np_params(variables):
  return jax.tree.map(np.asarray, variables['params'])


# --------------------------------------------------------------------------
# Parameter counts and shapes
# --------------------------------------------------------------------------


def test_paper_parameter_count_by_layer():
  params, _ = _abstract(models.AlexNet())
  want = {
      'conv1': _conv_params(11, 3, 96),
      'conv2': _conv_params(5, 96, 256, groups=2),
      'conv3': _conv_params(3, 256, 384),
      'conv4': _conv_params(3, 384, 384, groups=2),
      'conv5': _conv_params(3, 384, 256, groups=2),
      'fc6': 9216 * 4096 + 4096, 'fc7': 4096 * 4096 + 4096, 'fc8': 4096 * 1000 + 1000,
  }
  assert {k: _count(v) for k, v in params.items()} == want
  assert _count(params) == PAPER_PARAMS
  assert sum(want[f'conv{i}'] for i in range(1, 6)) == 2_334_080  # PAPER.md
  assert params['conv2']['kernel'].shape == (5, 5, 48, 256)      # One kernel, G=2.


def test_one_tower_parameter_count():
  params, _ = _abstract(models.AlexNet(towers=1))
  assert _count(params) == ONE_TOWER_PARAMS
  assert params['conv2']['kernel'].shape == (5, 5, 96, 256)


@pytest.mark.parametrize('input_size', [227, 224])
@pytest.mark.parametrize('towers', [2, 1])
def test_paper_layer_shapes(input_size, towers):
  model = models.AlexNet(input_size=input_size, towers=towers)
  _, shapes = _abstract(model, batch_size=2)
  assert shapes == PAPER_SHAPES
  assert model._conv1_padding() == {227: 0, 224: 2}[input_size]


def test_224_without_padding_does_not_give_55():
  _, shapes = _abstract(models.AlexNet(input_size=224, conv1_padding=0))
  assert shapes['conv1'] == (54, 54, 96)


def test_non_overlapping_pooling_still_gives_6x6():
  model = models.AlexNet(pool_window=2, pool_stride=2)  # Section 3.4 ablation.
  params, shapes = _abstract(model)
  assert shapes == PAPER_SHAPES
  assert _count(params) == PAPER_PARAMS


@pytest.mark.parametrize('removed,kernels,pool5', [
    (3, {'conv4': (3, 3, 128, 384), 'conv5': (3, 3, 192, 256)}, (6, 6, 256)),
    (4, {'conv3': (3, 3, 256, 384), 'conv5': (3, 3, 192, 256)}, (6, 6, 256)),
    (5, {'conv3': (3, 3, 256, 384), 'conv4': (3, 3, 192, 384)}, (6, 6, 384)),
])
def test_remove_conv(removed, kernels, pool5):
  params, shapes = _abstract(models.AlexNet(remove_conv=removed))
  assert f'conv{removed}' not in params and f'conv{removed}' not in shapes
  assert {k: params[k]['kernel'].shape for k in kernels} == kernels
  assert shapes['pool5'] == pool5
  assert params['fc6']['kernel'].shape == (math.prod(pool5), 4096)
  assert shapes['fc8'] == (1000,)


def test_remove_conv_rejects_other_layers():
  with pytest.raises(ValueError, match='remove_conv'):
    _abstract(models.AlexNet(remove_conv=2))


# --------------------------------------------------------------------------
# Local response normalization (section 3.3)
# --------------------------------------------------------------------------


@pytest.mark.parametrize('groups', [1, 2])
@pytest.mark.parametrize('impl', ['matmul', 'reduce_window'])
def test_lrn_matches_paper_formula(impl, groups):
  x = _relu_like((2, 3, 4, 96))
  want = ref.lrn(x.astype(np.float64), groups=groups)  # k=2, n=5, alpha=1e-4, beta=0.75
  got = np.asarray(models.local_response_norm(jnp.asarray(x), groups=groups, impl=impl))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # The edges: windows clipped at channel 0 and N-1 (and at 47/48 for towers).
  edges = [0, 1, 94, 95] + ([46, 47, 48, 49] if groups == 2 else [])
  np.testing.assert_allclose(got[..., edges], want[..., edges], rtol=1e-6)
  # The alpha term matters on these inputs: PyTorch/Caffe's alpha / n is far off.
  wrong = ref.lrn(x.astype(np.float64), alpha=1e-4 / 5, groups=groups)
  assert np.abs(got - wrong).max() > 1e-2 * np.abs(want).max()


def test_lrn_per_tower_differs_only_at_the_boundary():
  x = jnp.asarray(_relu_like((2, 3, 4, 96)))
  one, two = models.local_response_norm(x), models.local_response_norm(x, groups=2)
  differs = np.nonzero(np.any(np.asarray(one != two), axis=(0, 1, 2)))[0]
  assert set(differs) <= {46, 47, 48, 49} and len(differs) > 0


def test_lrn_band():
  band = models.lrn_band(6, 1, groups=2)
  np.testing.assert_array_equal(band, [[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                                       [0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0],
                                       [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]])


@pytest.mark.parametrize('groups', [1, 2])
@pytest.mark.parametrize('impl', ['matmul', 'reduce_window'])
def test_lrn_gradient_matches_finite_differences(impl, groups):
  x = _relu_like((1, 2, 1, 12), seed=1).astype(np.float64)
  w = np.random.default_rng(2).standard_normal(x.shape)
  f_ref = lambda a: np.sum(w * ref.lrn(a, groups=groups))
  numeric = np.zeros_like(x)
  for idx in np.ndindex(*x.shape):
    h = 1e-4 * max(1.0, abs(x[idx]))
    e = np.zeros_like(x)
    e[idx] = h
    numeric[idx] = (f_ref(x + e) - f_ref(x - e)) / (2 * h)
  with jax.enable_x64(True):
    f = lambda a: jnp.sum(w * models.local_response_norm(a, groups=groups, impl=impl))
    grad = np.asarray(jax.grad(f)(jnp.asarray(x)))
  assert grad.dtype == np.float64
  np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_lrn_keeps_low_precision_dtype():
  x = jnp.asarray(_relu_like((1, 2, 2, 16)), jnp.bfloat16)
  y = models.local_response_norm(x)
  assert y.dtype == jnp.bfloat16
  want = ref.lrn(np.asarray(x, np.float64))
  np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-2)


# --------------------------------------------------------------------------
# The whole network against the NumPy reference
# --------------------------------------------------------------------------


@pytest.mark.parametrize('input_size,towers,impls', [
    (227, 2, {}),
    (224, 2, {'grouped_conv_impl': 'feature_group', 'lrn_impl': 'reduce_window'}),
    (227, 1, {}),
    (227, 2, {'lrn_per_tower': False}),
])
def test_forward_matches_numpy_reference(input_size, towers, impls, paper_variables):
  model = models.AlexNet(input_size=input_size, towers=towers, **impls)
  # The Flax init for two towers; the same distribution drawn by NumPy for one.
  variables = paper_variables if towers == 2 else _numpy_variables(model, seed=1)
  images = _images(input_size, batch_size=2, seed=input_size + towers)
  got = np.asarray(model.apply(variables, images))  # Eval mode: no dropout.
  want = ref.alexnet(_np_params(variables), images,
                     conv1_padding={227: 0, 224: 2}[input_size], towers=towers,
                     lrn_per_tower=model.lrn_per_tower)
  assert got.shape == want.shape == (2, 1000)
  # Relative to the logits' scale (single logits can be near zero).
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  # The two images give different logits (the check is not vacuous).
  assert np.abs(want[0] - want[1]).max() > 1e-2 * np.abs(want).max()


def test_grouped_conv_impls_agree():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 9, 9, 12)), jnp.float32)
  for groups in (2, 4):
    conv = lambda impl: models.Conv(8, 3, padding=1, groups=groups, impl=impl)
    variables = {'params': {'kernel': rng.standard_normal((3, 3, 12 // groups, 8)),
                            'bias': rng.standard_normal(8)}}
    shapes = jax.eval_shape(conv('split').init, jax.random.key(0), x)
    assert shapes['params']['kernel'].shape == (3, 3, 12 // groups, 8)
    split = conv('split').apply(variables, x)
    fused = conv('feature_group').apply(variables, x)
    np.testing.assert_allclose(split, fused, rtol=1e-5, atol=1e-5)
  # And a whole (tiny) network.
  tiny = lambda impl: models.PRESETS['alexnet_tiny'](grouped_conv_impl=impl)
  images = _images(227, batch_size=1)
  variables = _numpy_variables(tiny('split'))
  a = tiny('split').apply(variables, images)
  b = tiny('feature_group').apply(variables, images)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())


# --------------------------------------------------------------------------
# Initialization (section 5)
# --------------------------------------------------------------------------


def test_paper_init(paper_variables):
  params = _np_params(paper_variables)
  for name, layer in params.items():
    w = layer['kernel'].astype(np.float64).ravel()
    n = w.size
    # Mean of n N(0, 0.01^2) draws: std 0.01/sqrt(n); sample std: ~0.01/sqrt(2n).
    assert abs(w.mean()) < 5 * 0.01 / math.sqrt(n), name
    assert abs(w.std() / 0.01 - 1) < 5 / math.sqrt(2 * n), name
  # A plain (untruncated) Gaussian: 37.7M fc6 draws reach beyond 5 sigma.
  assert np.abs(params['fc6']['kernel']).max() > 0.05
  ones, zeros = ('conv2', 'conv4', 'conv5', 'fc6', 'fc7'), ('conv1', 'conv3', 'fc8')
  for name in ones:
    np.testing.assert_array_equal(params[name]['bias'], 1.0, err_msg=name)
  for name in zeros:
    np.testing.assert_array_equal(params[name]['bias'], 0.0, err_msg=name)


# --------------------------------------------------------------------------
# Dropout (section 4.2) and modes
# --------------------------------------------------------------------------


def test_eval_is_deterministic_and_train_uses_the_key():
  model = models.PRESETS['alexnet_tiny']()
  images = _images(227, batch_size=2, scale=60.0)
  variables = _numpy_variables(model)
  a, b = model.apply(variables, images), model.apply(variables, images)
  np.testing.assert_array_equal(a, b)
  train = lambda seed: model.apply(variables, images, train=True,
                                   rngs={'dropout': jax.random.key(seed)})
  np.testing.assert_array_equal(train(1), train(1))
  assert np.abs(train(1) - train(2)).max() > 0
  assert np.abs(train(1) - a).max() > 0


def test_dropout_halves_fc6_and_fc7_outputs(paper_variables):
  model = models.AlexNet()
  images = _images(227, batch_size=2, scale=60.0)
  _, state = model.apply(paper_variables, images, train=True,
                         rngs={'dropout': jax.random.key(3)},
                         capture_intermediates=True, mutable=['intermediates'])
  inter = state['intermediates']
  for fc, drop in (('fc6', 'Dropout_0'), ('fc7', 'Dropout_1')):
    pre = np.maximum(np.asarray(inter[fc]['__call__'][0]), 0)  # After ReLU.
    post = np.asarray(inter[drop]['__call__'][0])
    positive = pre > 0
    n = positive.sum()
    assert n > 1000, fc
    dropped = np.mean(post[positive] == 0)
    assert abs(dropped - 0.5) < 5 * 0.5 / math.sqrt(n), (fc, dropped)
    kept = positive & (post != 0)  # Inverted dropout: survivors are doubled.
    np.testing.assert_allclose(post[kept], 2 * pre[kept], rtol=1e-6)
    assert np.all(post[~positive] == 0)


# --------------------------------------------------------------------------
# Other presets
# --------------------------------------------------------------------------


def test_torchvision_preset():
  model = models.create_model({'name': 'torchvision'})
  params, shapes = _abstract(model)
  assert models.input_shape(model) == (224, 224, 3)
  assert _count(params) == TORCHVISION_PARAMS
  assert shapes == {
      'conv1': (55, 55, 64), 'pool1': (27, 27, 64),
      'conv2': (27, 27, 192), 'pool2': (13, 13, 192),
      'conv3': (13, 13, 384), 'conv4': (13, 13, 256),
      'conv5': (13, 13, 256), 'pool5': (6, 6, 256),
      'fc6': (4096,), 'fc7': (4096,), 'fc8': (1000,)}


def test_adaptive_avg_pool_matches_torch_bins():
  x = jnp.arange(2 * 7 * 7 * 3, dtype=jnp.float32).reshape(2, 7, 7, 3)
  y = np.asarray(models.adaptive_avg_pool(x, 3))
  # PyTorch's bins for 7 -> 3: [0, 3), [2, 5), [4, 7).
  bins = [(0, 3), (2, 5), (4, 7)]
  want = np.array([[[np.asarray(x)[b, h0:h1, w0:w1].mean(axis=(0, 1))
                     for (w0, w1) in bins] for (h0, h1) in bins] for b in range(2)])
  np.testing.assert_allclose(y, want, rtol=1e-6)
  np.testing.assert_array_equal(models.adaptive_avg_pool(x[:, :6, :6], 6), x[:, :6, :6])


def test_figure1_preset_shapes_and_params():
  model = models.create_model({'name': 'figure1'})
  params, shapes = _abstract(model)
  assert shapes == {'conv1': (32, 32, 32), 'pool1': (16, 16, 32),
                    'conv2': (16, 16, 32), 'pool2': (8, 8, 32),
                    'conv3': (8, 8, 64), 'pool3': (4, 4, 64), 'fc4': (64,), 'fc5': (10,)}
  assert _count(params) == (_conv_params(5, 3, 32) + _conv_params(5, 32, 32)
                            + _conv_params(5, 32, 64) + 4 * 4 * 64 * 64 + 64 + 64 * 10 + 10)


def test_figure1_init_follows_layers_80sec():
  # initW (the std of the Gaussian) of cuda-convnet's layers-80sec.cfg; biases 0.
  params = models.Figure1Net().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  for name, std in (('conv1', 1e-4), ('conv2', 1e-2), ('conv3', 1e-2), ('fc4', 0.1), ('fc5', 0.1)):
    k = np.asarray(params[name]['kernel'])
    assert abs(k.std() / std - 1) < 0.15, name
    assert not np.asarray(params[name]['bias']).any()
  # tanh is far from saturation at init on 0-255 mean-subtracted pixels: the
  # first tanh units (after pool1) stay in its linear range.
  x = jnp.asarray(np.random.default_rng(0).normal(0, 60, (4, 32, 32, 3)), jnp.float32)
  _, state = models.Figure1Net(activation='tanh').apply(
      {'params': params}, x, mutable=['intermediates'])
  assert np.abs(np.asarray(state['intermediates']['pool1'][0])).max() < 0.5


@pytest.mark.parametrize('activation,fn', [('relu', ref.relu), ('tanh', np.tanh)])
def test_activation_switch(activation, fn):
  # Figure 1's net: pool1 = maxpool(act(conv1)), padded by one at the bottom/right.
  model = models.Figure1Net(activation=activation)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 32, 32, 3)), jnp.float32)
  variables = _numpy_variables(model, kernel_std=0.3)  # conv1 outputs ~ +-2.
  _, state = model.apply(variables, x, capture_intermediates=True,
                         mutable=['intermediates'])
  conv1 = np.asarray(state['intermediates']['conv1']['__call__'][0], np.float64)
  padded = np.pad(fn(conv1), ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=-np.inf)
  np.testing.assert_allclose(state['intermediates']['pool1'][0],
                             ref.max_pool(padded), rtol=1e-6, atol=1e-7)
  # AlexNet: fc6's output goes through the activation (dropout is off in eval).
  model = models.PRESETS['alexnet_tiny'](activation=activation)
  images = _images(227, batch_size=1, scale=60.0)
  variables = _numpy_variables(model)
  _, state = model.apply(variables, images, capture_intermediates=True,
                         mutable=['intermediates'])
  inter = state['intermediates']
  fc6 = np.asarray(inter['fc6']['__call__'][0], np.float64)
  np.testing.assert_allclose(inter['Dropout_0']['__call__'][0], fn(fc6),
                             rtol=1e-6, atol=1e-7)


def test_unknown_activation_and_model_keys_fail():
  with pytest.raises(ValueError, match='activation'):
    _abstract(models.AlexNet(activation='sigmoid'))
  with pytest.raises(ValueError, match='lrn_size'):
    models.create_model({'name': 'alexnet', 'lrn_size': 5})


def test_the_model_owns_its_defaults():
  """One place for each default (issue 25): configs/ilsvrc.py names the model,
  its classes and crop size, and leaves every other field to AlexNet (None)."""
  from configs import ilsvrc  # pylint: disable=g-import-not-at-top
  model_config = ilsvrc.get_config().model
  assert models.create_model(model_config) == models.AlexNet()
  given = models.resolve_model_kwargs('alexnet', {k: v for k, v in model_config.items()
                                                  if k != 'name'})
  assert given == {'num_classes': 1000, 'input_size': 227}
  # bias_init: 0.1 (Caffe's, docs/init_stability.md); the paper's 1 is one flag away.
  assert models.AlexNet().bias_init == 0.1
  model_config.bias_init = 1.0
  assert models.create_model(model_config).bias_init == 1.0


def test_presets_own_their_widths_and_refuse_conflicts():
  # configs/ilsvrc.py leaves the widths to the model (None): the preset's own.
  from configs import digits, ilsvrc  # pylint: disable=g-import-not-at-top
  config = ilsvrc.get_config()
  config.model.name = 'alexnet_tiny'
  model = models.create_model(config.model)
  assert (model.conv_features, model.fc_features) == ((8, 16, 24, 24, 16), 64)
  assert summary.param_count(model) < 200_000
  # Widths set to something else (configs/digits.py's) conflict: refused, named.
  config = digits.get_config()
  config.model.name = 'alexnet_tiny'
  with pytest.raises(ValueError, match=r'conv_features=\(32, 64.*alexnet_tiny'):
    models.create_model(config.model)


def test_torchvision_from_the_ilsvrc_config():
  # The AlexNet-only keys (towers, lrn, ...), unset (None) in configs/ilsvrc.py,
  # are dropped.
  from configs import ilsvrc, torchvision  # pylint: disable=g-import-not-at-top
  config = ilsvrc.get_config()
  config.model.name = 'torchvision'
  assert summary.param_count(models.create_model(config.model)) == TORCHVISION_PARAMS
  config.model.lrn = False  # Set: a key torchvision does not take.
  with pytest.raises(ValueError, match=r"\['lrn'\].*'torchvision'"):
    models.create_model(config.model)
  assert summary.param_count(models.create_model(torchvision.get_config().model)) == TORCHVISION_PARAMS


# --------------------------------------------------------------------------
# alexnet_jax.summary
# --------------------------------------------------------------------------


def test_summary_table():
  model = models.AlexNet()
  rows = summary.layer_table(model)
  assert [r.name for r in rows] == ['input'] + PAPER_LAYERS
  assert {r.name: r.shape for r in rows[1:]} == PAPER_SHAPES
  assert summary.param_count(model) == PAPER_PARAMS
  want_macs = {
      'conv1': _conv_macs(55, 11, 3, 96), 'conv2': _conv_macs(27, 5, 96, 256, 2),
      'conv3': _conv_macs(13, 3, 256, 384), 'conv4': _conv_macs(13, 3, 384, 384, 2),
      'conv5': _conv_macs(13, 3, 384, 256, 2),
      'fc6': 9216 * 4096, 'fc7': 4096 * 4096, 'fc8': 4096 * 1000}
  assert {r.name: r.macs for r in rows if r.macs} == want_macs
  assert summary.macs_per_image(model) == sum(want_macs.values()) == 724_406_816
  assert summary.train_flops_per_image(model) == 6 * 724_406_816
  assert summary.param_count(models.AlexNet(towers=1)) == ONE_TOWER_PARAMS
  assert summary.param_count(models.create_model({'name': 'torchvision'})) == TORCHVISION_PARAMS
  text = summary.format_table(rows)
  assert '60,965,224' in text and '724,406,816' in text


@pytest.mark.parametrize('args,want', [
    ([], ['60,965,224', '724,406,816', '4,346,440,896', '6x6x256']),
    (['--config.model.towers=1', '--config.model.input_size=224'], ['62,378,344', '224x224x3']),
])
def test_summary_command(args, want):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.summary', '--config=configs/ilsvrc.py', *args],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  for w in want:
    assert w in proc.stdout, proc.stdout
