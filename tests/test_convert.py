"""Weight import (alexnet_jax.convert): Caffe / cuda-convnet NCHW arrays and a
torchvision state_dict become our parameters and compute the same network.

References: a float64 NumPy network written here in NCHW (OIHW kernels,
(c, h, w) flatten), using tests/numpy_alexnet.py's LRN and pooling; and, where
torch is installed, torchvision's AlexNet layers built in torch.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import convert
from alexnet_jax import models
from alexnet_jax import predict
from configs import ilsvrc
from tests import numpy_alexnet


def conv_nchw(x, w, b, stride=1, pad=0, groups=1):
  """(B, C, H, W) * (O, C/G, kh, kw) in float64, group g = output block g reads input block g."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  o, cg, kh, kw = w.shape
  patches = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
  og = o // groups
  outs = [np.einsum('bchwpq,ocpq->bohw', patches[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og])
          for g in range(groups)]
  return np.concatenate(outs, 1) + b[None, :, None, None]


def nchw_alexnet(arrays, images_nchw, towers=2):
  """The paper's AlexNet on NCHW images from Caffe-layout arrays, eval mode, float64."""
  a = {k: np.asarray(v, np.float64) for k, v in arrays.items()}
  nhwc = lambda f: lambda x: f(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
  lrn = nhwc(lambda x: numpy_alexnet.lrn(x, groups=towers))  # Per tower (the default).
  pool = nhwc(numpy_alexnet.max_pool)
  relu = numpy_alexnet.relu
  x = np.asarray(images_nchw, np.float64)
  x = pool(lrn(relu(conv_nchw(x, a['conv1.weight'], a['conv1.bias'], stride=4))))
  x = pool(lrn(relu(conv_nchw(x, a['conv2.weight'], a['conv2.bias'], pad=2, groups=towers))))
  x = relu(conv_nchw(x, a['conv3.weight'], a['conv3.bias'], pad=1))
  x = relu(conv_nchw(x, a['conv4.weight'], a['conv4.bias'], pad=1, groups=towers))
  x = pool(relu(conv_nchw(x, a['conv5.weight'], a['conv5.bias'], pad=1, groups=towers)))
  x = x.reshape(len(x), -1)  # (c, h, w) order, as Caffe and cuda-convnet flatten.
  x = relu(x @ a['fc6.weight'].T + a['fc6.bias'])
  x = relu(x @ a['fc7.weight'].T + a['fc7.bias'])
  return x @ a['fc8.weight'].T + a['fc8.bias']


def _caffe_arrays(seed=0, conv=(8, 16, 24, 24, 16), fc=64, classes=10, towers=2):
  """Random Caffe-layout arrays for a narrow two-tower AlexNet (227 inputs)."""
  rng = np.random.default_rng(seed)
  shapes = {'conv1': (conv[0], 3, 11, 11), 'conv2': (conv[1], conv[0] // towers, 5, 5),
            'conv3': (conv[2], conv[1], 3, 3), 'conv4': (conv[3], conv[2] // towers, 3, 3),
            'conv5': (conv[4], conv[3] // towers, 3, 3), 'fc6': (fc, conv[4] * 36),
            'fc7': (fc, fc), 'fc8': (classes, fc)}
  arrays = {}
  for name, shape in shapes.items():
    fan_in = np.prod(shape[1:])
    arrays[f'{name}.weight'] = rng.normal(0, 1 / np.sqrt(fan_in), shape).astype(np.float32)
    arrays[f'{name}.bias'] = rng.normal(0, 0.1, shape[0]).astype(np.float32)
  return arrays


def _images(seed=0, size=227):
  return (60 * np.random.default_rng(seed).standard_normal((2, size, size, 3))).astype(np.float32)


def _assert_close(got, want):
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_nchw_arrays_give_the_float64_nchw_network():
  arrays = _caffe_arrays()
  model = models.PRESETS['alexnet_tiny'](num_classes=10)
  params = convert.nchw_params(arrays)
  images = _images()
  got = np.asarray(model.apply({'params': params}, images))
  want = nchw_alexnet(arrays, images.transpose(0, 3, 1, 2))
  _assert_close(got, want)
  # The float64 reference in our layout agrees too (same parameters, NHWC).
  _assert_close(got, numpy_alexnet.alexnet(params, images))
  # Not permuting fc6's rows would be wrong: the test can tell.
  wrong = dict(params, fc6={'kernel': arrays['fc6.weight'].T, 'bias': params['fc6']['bias']})
  assert np.abs(np.asarray(model.apply({'params': wrong}, images)) - want).max() > 1e-2 * np.abs(want).max()


def test_bgr_weights_read_rgb_images():
  arrays = _caffe_arrays(seed=1)
  model = models.PRESETS['alexnet_tiny'](num_classes=10)
  images = _images(seed=1)
  got = np.asarray(model.apply({'params': convert.nchw_params(arrays, bgr=True)}, images))
  bgr_images = images[..., ::-1].transpose(0, 3, 1, 2)  # What the Caffe net was fed.
  _assert_close(got, nchw_alexnet(arrays, bgr_images))


def test_layout_round_trip_and_missing_arrays():
  params = convert.nchw_params(_caffe_arrays())
  back = convert.from_nchw(convert.to_nchw(params, (16, 6, 6)))
  jax.tree.map(np.testing.assert_array_equal, back, params)
  arrays = _caffe_arrays()
  del arrays['fc7.bias']
  with pytest.raises(ValueError, match='fc7.bias'):
    convert.nchw_params(arrays)


def test_converted_workdir_serves_predict_and_init_from(tmp_path):
  config = ilsvrc.get_config()
  config.model.name = 'alexnet_tiny'
  config.model.num_classes = 10
  params = convert.nchw_params(_caffe_arrays())
  convert.write_workdir(str(tmp_path / 'w'), config, params, [f'c{i}' for i in range(10)])
  run = predict.load_run(str(tmp_path / 'w'))
  assert run.class_names[3] == 'c3' and run.step == 0
  jax.tree.map(np.testing.assert_array_equal, run.params, params)
  # A model the weights do not fit is refused, naming the layers.
  config.model.num_classes = 5
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match='fc8'):
    convert.write_workdir(str(tmp_path / 'w5'), config, params)


@pytest.mark.slow
def test_converted_workdir_is_resumed_by_train_and_evaluate(tmp_path):
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  from tests.conftest import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config(num_train_steps=1)
  config.eval.ten_crop = False
  config.optimizer.learning_rate = 1e-12  # The step keeps the imported weights.
  model = models.create_model(config.model)
  params = jax.device_get(model.init(jax.random.key(7), jnp.zeros((1, 67, 67, 3)),
                                     train=False)['params'])
  convert.write_workdir(str(tmp_path / 'w'), config, params)
  state = train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert int(state.step) == 1
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               jax.device_get(state.params), params)


def _torchvision_alexnet(torch, num_classes=1000):
  """torchvision.models.alexnet's modules (same indices, hence the same state_dict keys)."""
  nn = torch.nn
  net = nn.Module()
  net.features = nn.Sequential(
      nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
      nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
      nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
      nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
      nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
  net.avgpool = nn.AdaptiveAvgPool2d((6, 6))
  net.classifier = nn.Sequential(
      nn.Dropout(), nn.Linear(256 * 36, 4096), nn.ReLU(), nn.Dropout(),
      nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes))
  net.eval()  # No dropout.
  forward = lambda x: net.classifier(torch.flatten(net.avgpool(net.features(x)), 1))
  return net, forward


def test_torchvision_state_dict_gives_the_torch_network(tmp_path):
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  net, forward = _torchvision_alexnet(torch)
  with torch.no_grad():  # Biases large enough to matter.
    for p in net.parameters():
      if p.ndim == 1:
        p.normal_(0, 0.1)
  torch.save(net.state_dict(), tmp_path / 'alexnet.pth')
  params = convert.load_source('torchvision', str(tmp_path / 'alexnet.pth'))
  images = _images(size=224)
  with torch.no_grad():
    want = forward(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  model = models.create_model({'name': 'torchvision'})
  got = np.asarray(model.apply({'params': params}, jnp.asarray(images)))
  _assert_close(got, want)
  with pytest.raises(ValueError, match='features.0.weight'):
    convert.torchvision_params({k: v for k, v in net.state_dict().items()
                                if k != 'features.0.weight'})


def test_convert_command_help():
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, '-m', 'alexnet_jax.convert', '--help'],
                       capture_output=True, text=True, cwd=root)
  assert '--source' in out.stdout and '--bgr' in out.stdout
