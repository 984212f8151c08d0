"""Imported weights compute what their source computes (issue 20, items 12-13).

Each test writes a 256x256 PNG (so no resampling is involved), random weights
in the source's own layout, converts them with alexnet_jax.convert, runs the
prediction path (alexnet_jax.predict: decode, centre crop, mean, pixel scale,
forward, softmax) and compares the probabilities with a reference written
here from the source's definitions, not with the converter's layout
functions:
  torchvision  its eval transform (Resize(256) is the identity at 256,
               CenterCrop(224), ToTensor, Normalize(mean, std)) as torch ops,
               and its AlexNet forward in torch (needs torch; skipped without).
  Caffe        bvlc_alexnet's deploy.prototxt layers in float64 NumPy, NCHW,
               on a BGR image minus a per-pixel mean image, with Caffe's LRN
               (alpha / n, k = 1, across all maps) and ceil-mode pooling.
"""

import functools
import math

import jax
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from alexnet_jax import augment
from alexnet_jax import config_checks
from alexnet_jax import convert
from alexnet_jax import models
from alexnet_jax import predict
from alexnet_jax import stats as stats_lib
from alexnet_jax import steps
from configs import caffe as caffe_config
from configs import torchvision as torchvision_config

R = 256  # the image's side: Resize(256) / the 256x256 base image are identities


def _png(path, seed):
  """A 256x256 RGB PNG: a smooth colour gradient plus noise, uint8 (256, 256, 3)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:R, 0:R] / R
  smooth = np.stack([200 * yy, 200 * xx, 120 + 100 * np.sin(6 * xx * yy)], -1)
  pixels = np.clip(smooth + rng.normal(0, 30, (R, R, 3)), 0, 255).astype(np.uint8)
  Image.fromarray(pixels).save(path)
  return pixels


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _predicted_probs(workdir, png, num_classes):
  """(K,) probabilities from alexnet_jax.predict, by class id."""
  result = predict.predict(str(workdir), [str(png)], k=num_classes)
  probs = np.zeros(num_classes)
  for p in result['predictions'][0]:
    probs[p['class']] = p['probability']
  return probs


# --------------------------------------------------------------------------
# torchvision (item 12)
# --------------------------------------------------------------------------


def _torchvision_eval_input(torch, pixels):
  """torchvision's ImageNet eval transform on a 256x256 uint8 image -> (1, 3, 224, 224)."""
  x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255  # ToTensor
  top = int(round((R - 224) / 2.0))                                     # CenterCrop(224)
  x = x[:, top:top + 224, top:top + 224]
  mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]             # Normalize
  std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
  return ((x - mean) / std)[None]


def test_torchvision_weights_give_torchvisions_probabilities(tmp_path):
  torch = pytest.importorskip('torch')
  from tests.test_convert import _torchvision_alexnet  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  net, forward = _torchvision_alexnet(torch)
  pixels = _png(tmp_path / 'image.png', seed=0)
  x = _torchvision_eval_input(torch, pixels)
  with torch.no_grad():  # fc8 scaled so the logits' std is 5: a peaked softmax.
    scale = 5 / forward(x).std()
    net.classifier[6].weight.mul_(scale)
    net.classifier[6].bias.mul_(scale)
    want = torch.softmax(forward(x), -1)[0].double().numpy()
  torch.save(net.state_dict(), tmp_path / 'alexnet.pth')
  assert want.max() > 0.3  # peaked: a 1e-5 difference is a small relative one

  config = torchvision_config.get_config()
  params = convert.load_source('torchvision', str(tmp_path / 'alexnet.pth'))
  convert.write_workdir(str(tmp_path / 'w'), config, params)
  got = _predicted_probs(tmp_path / 'w', tmp_path / 'image.png', 1000)
  print(f'torchvision: max |p - p_ref| = {np.abs(got - want).max():.2e}, max p {want.max():.3f}')
  assert np.abs(got - want).max() < 1e-5

  # The former single pixel scale 1 / (0.226 * 255) misses by far more: the test can tell.
  run = predict.load_run(str(tmp_path / 'w'))
  images = predict.eval_images(run.config, [str(tmp_path / 'image.png')], False)
  one_scale = np.asarray(steps.eval_probs(run.params, images, run.stats, model=run.model,
                                          pixel_scale=1 / (0.226 * 255)))[0]
  print(f'torchvision, one pixel scale: max |p - p_ref| = {np.abs(one_scale - want).max():.2e}')
  assert np.abs(one_scale - want).max() > 1e-5


def test_per_channel_pixel_scale_on_the_device():
  rng = np.random.default_rng(0)
  scale = (0.5, 2.0, 3.0)  # distinct per channel, so a mix-up shows
  mean = rng.uniform(0, 255, (1, 1, 3))
  stats = augment.make_stats(mean)
  batch = {'image': rng.integers(0, 256, (2, 5, 5, 3), dtype=np.uint8),
           'offset': np.zeros((2, 2), np.int32), 'flip': np.array([False, True]),
           'alpha': np.zeros((2, 3), np.float32)}
  want = (batch['image'] - mean) * np.array(scale)            # (pixel - mean) * s_c
  want[1] = want[1][:, ::-1]
  got = jax.jit(functools.partial(augment.train_images, pixel_scale=scale))(batch, stats)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-3)
  got = augment.eval_images(batch['image'], stats, crop_size=5, pixel_scale=scale)
  np.testing.assert_allclose(np.asarray(got), (batch['image'] - mean) * np.array(scale),
                             rtol=1e-5, atol=1e-3)
  assert augment.pixel_scale_of([1, 2, 3]) == (1.0, 2.0, 3.0)
  assert augment.pixel_scale_of(0.5) == 0.5


@pytest.mark.parametrize('scale,ok', [((0.1, 0.2, 0.3), True), ((0.1, 0.2), False),
                                      ((0.1, 0.0, 0.3), False), (0.5, True), (0.0, False)])
def test_config_checks_pixel_scale(scale, ok):
  config = torchvision_config.get_config()
  with config.input.ignore_type():
    config.input.pixel_scale = scale
  problems = [p for p in config_checks.validate(config) if 'pixel_scale' in p]
  assert not problems if ok else len(problems) == 1


# --------------------------------------------------------------------------
# Caffe bvlc_alexnet (item 13), float64 NCHW
# --------------------------------------------------------------------------


def caffe_conv(x, w, b, stride=1, pad=0, group=1):
  """ConvolutionLayer: x (N, C, H, W), w (O, C / group, kh, kw); output group g
  (the g-th block of O) reads input group g."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  o, cg, kh, kw = w.shape
  win = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
  og = o // group
  y = [np.einsum('nchwij,ocij->nohw', win[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og])
       for g in range(group)]
  return np.concatenate(y, 1) + b[None, :, None, None]


def caffe_lrn(a, local_size=5, alpha=1e-4, beta=0.75, k=1.0):
  """LRNLayer, ACROSS_CHANNELS: scale_c = k + alpha / n * sum of a^2 over channels
  c - (n - 1) / 2 .. c + (n - 1) / 2 (zero-padded), b = a * scale^-beta."""
  pre_pad = (local_size - 1) // 2
  sq = np.pad(a * a, ((0, 0), (pre_pad, pre_pad), (0, 0), (0, 0)))
  window = sum(sq[:, i:i + a.shape[1]] for i in range(local_size))
  return a * (k + alpha / local_size * window) ** -beta


def caffe_max_pool(x, kernel=3, stride=2):
  """PoolingLayer MAX, pad 0: ceil((H - k) / s) + 1 outputs, windows clipped at the edge."""
  n, c, h, w = x.shape
  oh, ow = (int(math.ceil((d - kernel) / stride)) + 1 for d in (h, w))
  y = np.full((n, c, oh, ow), -np.inf)
  for i in range(oh):
    for j in range(ow):
      y[:, :, i, j] = x[:, :, i * stride:min(i * stride + kernel, h),
                        j * stride:min(j * stride + kernel, w)].max(axis=(2, 3))
  return y


def caffe_bvlc_alexnet(blobs, data):
  """models/bvlc_alexnet/deploy.prototxt, test phase (dropout is the identity): fc8."""
  relu = lambda x: np.maximum(x, 0)
  w = lambda name: (blobs[f'{name}.weight'].astype(np.float64),
                    blobs[f'{name}.bias'].astype(np.float64))
  x = caffe_conv(data, *w('conv1'), stride=4)
  x = caffe_max_pool(caffe_lrn(relu(x)))                       # norm1 before pool1
  assert x.shape[2:] == (27, 27)  # ceil((55 - 3) / 2) + 1 = 27: ceil mode = floor mode
  x = caffe_max_pool(caffe_lrn(relu(caffe_conv(x, *w('conv2'), pad=2, group=2))))
  assert x.shape[2:] == (13, 13)
  x = relu(caffe_conv(x, *w('conv3'), pad=1))
  x = relu(caffe_conv(x, *w('conv4'), pad=1, group=2))
  x = caffe_max_pool(relu(caffe_conv(x, *w('conv5'), pad=1, group=2)))
  assert x.shape[2:] == (6, 6)
  x = x.reshape(len(x), -1)                                    # InnerProduct: (c, h, w)
  for name in ('fc6', 'fc7'):
    x = relu(x @ w(name)[0].T + w(name)[1])
  return x @ w('fc8')[0].T + w('fc8')[1]


CONV, FC, CLASSES = (16, 32, 48, 48, 32), 64, 10  # a narrow bvlc_alexnet, 227 inputs


def _caffe_blobs(seed):
  """Random weights in Caffe's blob layout (conv (O, C / group, kh, kw), fc (out, in))."""
  rng = np.random.default_rng(seed)
  c1, c2, c3, c4, c5 = CONV
  shapes = {'conv1': (c1, 3, 11, 11), 'conv2': (c2, c1 // 2, 5, 5), 'conv3': (c3, c2, 3, 3),
            'conv4': (c4, c3 // 2, 3, 3), 'conv5': (c5, c4 // 2, 3, 3),
            'fc6': (FC, c5 * 36), 'fc7': (FC, FC), 'fc8': (CLASSES, FC)}
  blobs = {}
  for name, shape in shapes.items():
    blobs[f'{name}.weight'] = rng.normal(0, 1 / np.sqrt(np.prod(shape[1:])), shape).astype(np.float32)
    blobs[f'{name}.bias'] = rng.normal(0, 0.5, shape[0]).astype(np.float32)
  return blobs


@pytest.fixture(scope='module')
def caffe_run(tmp_path_factory):
  """A converted narrow bvlc_alexnet with a per-pixel mean image, and its reference."""
  tmp = tmp_path_factory.mktemp('caffe')
  pixels = _png(tmp / 'image.png', seed=3)
  mean_rgb = np.random.default_rng(2).uniform(60, 190, (R, R, 3)).astype(np.float32)
  stats_lib.save(stats_lib.Stats(mean_rgb, np.zeros(3, np.float32), np.eye(3, dtype=np.float32),
                                 1, 'a Caffe mean image'), str(tmp / 'mean.npz'))
  # Caffe's test-phase data: BGR minus the mean image, both cut at the centre.
  off = (R - 227) // 2                                         # DataTransformer: 14
  bgr = (pixels.astype(np.float64) - mean_rgb)[..., ::-1]
  data = bgr[off:off + 227, off:off + 227].transpose(2, 0, 1)[None]
  blobs = _caffe_blobs(seed=1)
  scale = np.float32(3 / caffe_bvlc_alexnet(blobs, data).std())  # fc8: a peaked softmax
  blobs['fc8.weight'] *= scale
  blobs['fc8.bias'] *= scale
  want = _softmax(caffe_bvlc_alexnet(blobs, data))[0]
  np.savez(tmp / 'bvlc_alexnet.npz', **blobs)

  config = caffe_config.get_config()
  config.model.conv_features, config.model.fc_features = CONV, FC
  config.model.num_classes = CLASSES
  config.input.stats_path = str(tmp / 'mean.npz')
  params = convert.load_source('nchw', str(tmp / 'bvlc_alexnet.npz'), bgr=True)
  convert.write_workdir(str(tmp / 'w'), config, params)
  return tmp, want


def test_caffe_weights_give_caffes_probabilities(caffe_run):
  tmp, want = caffe_run
  assert want.max() > 0.3
  got = _predicted_probs(tmp / 'w', tmp / 'image.png', CLASSES)
  print(f'Caffe: max |p - p_ref| = {np.abs(got - want).max():.2e}, max p {want.max():.3f}')
  assert np.abs(got - want).max() < 1e-5


@pytest.mark.parametrize('wrong', [
    dict(lrn_alpha=1e-4),                                       # the paper's alpha * sum
    dict(lrn_per_tower=True),                                   # windows stop at the towers
    dict(lrn_bias=2.0),                                         # the paper's k
])
def test_caffe_parity_needs_caffes_lrn(caffe_run, wrong):
  tmp, want = caffe_run
  run = predict.load_run(str(tmp / 'w'))
  model = models.create_model(dict(run.config.model, **wrong))
  images = predict.eval_images(run.config, [str(tmp / 'image.png')], False)
  got = np.asarray(steps.eval_probs(run.params, images, run.stats, model=model))[0]
  print(f'Caffe with {wrong}: max |p - p_ref| = {np.abs(got - want).max():.2e}')
  assert np.abs(got - want).max() > 1e-4


def test_caffe_parity_needs_bgr(caffe_run):
  tmp, want = caffe_run
  run = predict.load_run(str(tmp / 'w'))
  rgb_params = convert.load_source('nchw', str(tmp / 'bvlc_alexnet.npz'), bgr=False)
  images = predict.eval_images(run.config, [str(tmp / 'image.png')], False)
  got = np.asarray(steps.eval_probs(rgb_params, images, run.stats, model=run.model))[0]
  print(f'Caffe without --bgr: max |p - p_ref| = {np.abs(got - want).max():.2e}')
  assert np.abs(got - want).max() > 1e-4
