"""AlexNet in Flax equals the same network in PyTorch (optional: needs torch).

  pip install -r requirements-dev.txt

The PyTorch network (benchmarks/torch_alexnet.py) uses nn.Conv2d(groups=2),
nn.LocalResponseNorm with alpha * n (section 3.3), NCHW layout and flatten; the
Flax parameters are copied over (HWIO -> OIHW, fc6 rows permuted).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')

from alexnet_jax import models  # pylint: disable=g-import-not-at-top
from benchmarks import torch_alexnet  # pylint: disable=g-import-not-at-top


def _variables(model, seed=0, kernel_std=0.01):
  """Flax variables of ``model`` drawn by NumPy (kernels N(0, 0.01^2) as in the
  paper, biases N(0, 1)): no JAX RNG to compile."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, *models.input_shape(model))))
  draw = lambda path, s: rng.normal(
      0, kernel_std if path[-1].key == 'kernel' else 1.0, s.shape).astype(np.float32)
  return {'params': jax.tree_util.tree_map_with_path(draw, shapes['params'])}


def _images(input_size, seed=0):
  # Std 250: conv1's ReLU outputs reach the range where LRN's alpha term matters.
  rng = np.random.default_rng(seed)
  return (250 * rng.standard_normal((2, input_size, input_size, 3))).astype(np.float32)


def _assert_close(got, want):
  # Relative to the logits' scale (single logits can be near zero).
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _torch_logits(net, images):
  with torch.no_grad():
    return net.eval()(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def test_torch_lrn_with_alpha_times_n_is_the_papers():
  x = np.maximum(np.random.default_rng(0).normal(20, 100, (2, 3, 4, 96)), 0).astype(np.float32)
  want = np.asarray(models.local_response_norm(jnp.asarray(x)))
  lrn = torch.nn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)
  got = lrn(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  plain = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
  got = plain(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
  assert np.abs(got - want).max() > 1e-2 * np.abs(want).max()


@pytest.mark.parametrize('preset,kwargs', [
    ('alexnet', dict(input_size=227)),
    ('alexnet', dict(input_size=224)),
    ('alexnet', dict(towers=1)),
    ('alexnet_tiny', dict(lrn_per_tower=True, remove_conv=4, pool_window=2,
                          activation='tanh')),
])
def test_flax_equals_torch(preset, kwargs):
  model = models.PRESETS[preset](**kwargs)
  variables = _variables(model)
  net = torch_alexnet.copy_flax_params_to_torch(
      variables['params'], torch_alexnet.torch_alexnet(model))
  assert sum(p.numel() for p in net.parameters()) == sum(
      x.size for x in jax.tree.leaves(variables))
  images = _images(model.input_size)
  want = np.asarray(model.apply(variables, images))
  got = _torch_logits(net, images)
  _assert_close(got, want)


def test_fc6_permutation_matters():
  model = models.PRESETS['alexnet_tiny']()  # fc6 reads 6x6x16.
  variables = _variables(model, kernel_std=0.1)  # Large enough that fc6's input matters.
  net = torch_alexnet.copy_flax_params_to_torch(
      variables['params'], torch_alexnet.torch_alexnet(model))
  images = _images(227)
  want = np.asarray(model.apply(variables, images))
  _assert_close(_torch_logits(net, images), want)
  with torch.no_grad():  # Flax's (h, w, c) rows used as if they were (c, h, w).
    net.fc6.weight.copy_(torch.from_numpy(
        np.asarray(variables['params']['fc6']['kernel']).T.copy()))
  got = _torch_logits(net, images)
  assert np.abs(got - want).max() > 1e-2 * np.abs(want).max()


def test_paper_parameter_count_and_train_mode():
  net = torch_alexnet.torch_alexnet()
  assert sum(p.numel() for p in net.parameters()) == 60_965_224
  assert net.pool5_shape == (256, 6, 6)
  x = torch.zeros(2, 3, 227, 227)
  net.train()
  torch.manual_seed(0)
  a = net(x)
  b = net(x)
  assert a.shape == (2, 1000) and not torch.equal(a, b)  # Dropout is on.
