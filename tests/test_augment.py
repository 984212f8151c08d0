"""Sections 2 and 4.1 split between host and device: the same recipe either way.

The host (alexnet_jax.preprocessing) sends uint8 pixels and per-example
draws; the device (alexnet_jax.augment) finishes the recipe. Checked here
against an independent float64 NumPy transcription of the paper's recipe on a
real JPEG file written by the test: geometry exactly (crop offsets, flips,
the ten patches, the mean image's cut), values to float tolerance (plus the
half grey level of rounding to uint8 where a patch was resampled).

Hermetic: every image is written here; nothing is downloaded.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import augment
from alexnet_jax import input_pipeline
from alexnet_jax import parallel
from alexnet_jax import preprocessing as pp
from alexnet_jax import stats as stats_lib
from configs import ilsvrc
from tests import ilsvrc_fixtures as fx

R, S = 256, 227
H, W = 300, 420  # the non-square test JPEG: shorter side 300 -> 256
ROUND = 0.5 + 0.05  # uint8 rounding of a resampled patch + resampling float error


# --------------------------------------------------------------------------
# Float64 NumPy reference of the recipe
# --------------------------------------------------------------------------


def np_resize_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """Half-pixel-centre bilinear resize, sample points clamped to the image."""
  def axis(n_in, n_out):
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(src).astype(int)
    return i0, np.minimum(i0 + 1, n_in - 1), src - i0
  y0, y1, wy = axis(x.shape[0], out_h)
  x0, x1, wx = axis(x.shape[1], out_w)
  x = x.astype(np.float64)
  rows = x[y0] * (1 - wy)[:, None, None] + x[y1] * wy[:, None, None]
  return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def np_base_image(pixels: np.ndarray, antialias: bool = False) -> np.ndarray:
  """Section 2: shorter side to R, then the central R x R crop; float64."""
  h, w = pixels.shape[:2]
  rh, rw = round(h * R / min(h, w)), round(w * R / min(h, w))
  if antialias:  # TF's antialiased kernel is the reference here
    resized = tf.image.resize(pixels, [rh, rw], antialias=True).numpy().astype(np.float64)
  else:
    resized = np_resize_bilinear(pixels, rh, rw)
  oy, ox = (rh - R) // 2, (rw - R) // 2
  return resized[oy:oy + R, ox:ox + R]


def np_train_patch(base, offset, flip, alpha, mean, eigval, eigvec, scale=1.0):
  """Section 4.1 on the R x R image: patch at offset, reflected, minus the mean
  under it (reflected with it), plus 255 * P (alpha * lambda); float64."""
  oy, ox = offset
  x = np.asarray(base, np.float64)[oy:oy + S, ox:ox + S]
  m = mean[oy:oy + S, ox:ox + S] if mean.shape[0] > 1 else mean
  x = x - m
  if flip:
    x = x[:, ::-1]
  noise = 255.0 * np.asarray(eigvec, np.float64) @ (np.asarray(alpha, np.float64) * eigval)
  return (x + noise) * scale


def np_test_patches(base, mean, flip=True, scale=1.0):
  """Section 4.1: the four corner and centre patches, then their reflections."""
  m, c = R - S, (R - S) // 2
  x = np.asarray(base, np.float64) - mean
  crops = [x[oy:oy + S, ox:ox + S] for oy, ox in ((0, 0), (0, m), (m, 0), (m, m), (c, c))]
  if flip:
    crops += [p[:, ::-1] for p in crops]
  return np.stack(crops) * scale


@pytest.fixture(scope='module')
def jpeg(tmp_path_factory):
  """(encoded tensor, decoded uint8 pixels) of a real JPEG file written here."""
  path = tmp_path_factory.mktemp('jpeg') / 'wide.JPEG'
  path.write_bytes(fx.jpeg_bytes(fx.smooth_image(np.random.default_rng(1), H, W)))
  encoded = tf.io.read_file(str(path))
  return encoded, tf.io.decode_jpeg(encoded, channels=3).numpy()


def _recipe(**kw):
  """configs/ilsvrc.py's recipe (the one place for its values) with `kw` changed."""
  config = ilsvrc.get_config()
  return input_pipeline.make_recipe(config.model.input_size, **config.input)._replace(
      **{'resize_size': R, 'crop_size': S, 'pca_std': 0.1, 'flip': True, **kw})


def _stats(rng):
  """A random mean image and a random orthonormal PCA, float64 and as DeviceStats."""
  mean = rng.uniform(0, 255, (R, R, 3))
  eigvec = np.linalg.qr(rng.normal(size=(3, 3)))[0]
  eigval = np.array([0.2, 0.02, 0.004])
  return (mean, eigval, eigvec), augment.make_stats(mean, eigval, eigvec)


def _batch(examples):
  return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


# --------------------------------------------------------------------------
# Training patches: crops, flips, PCA noise, the mean image
# --------------------------------------------------------------------------


def _old_draws(seed, recipe, room):
  """The draws of the previous host-float path (a0fbd28 train_image), same seed."""
  seeds = tf.random.experimental.stateless_split(seed, 3)
  offset = tf.random.stateless_uniform([2], seeds[0], minval=0, maxval=tf.int32.max,
                                       dtype=tf.int32) % room
  flip = tf.random.stateless_uniform([], seeds[1]) < 0.5
  alpha = tf.random.stateless_normal([3], seeds[2], stddev=recipe.pca_std)
  return offset.numpy(), bool(flip), alpha.numpy()


@pytest.mark.parametrize('fast', [False, True])
def test_training_patches_equal_the_numpy_recipe(jpeg, fast):
  encoded, pixels = jpeg
  base = np_base_image(pixels)
  (mean, eigval, eigvec), stats = _stats(np.random.default_rng(0))
  recipe = _recipe(fast_train_resample=fast)
  examples = [pp.train_example(encoded, tf.constant([7, i], tf.int64), recipe)
              for i in range(12)]
  examples = [{k: v.numpy() for k, v in e.items()} for e in examples]
  batch = _batch(examples)
  assert batch['image'].dtype == np.uint8 and batch['image'].shape == (12, S, S, 3)
  out = np.asarray(jax.jit(functools.partial(augment.train_images, pixel_scale=0.5))(
      batch, stats))
  for i, e in enumerate(examples):
    # The random draws are those of the previous host path, for the same seed.
    offset, flip, alpha = _old_draws(tf.constant([7, i], tf.int64), recipe, R - S + 1)
    np.testing.assert_array_equal(e['offset'], offset)
    assert bool(e['flip']) == flip
    np.testing.assert_allclose(e['alpha'], alpha, rtol=1e-6)
    # Device == NumPy on the same uint8 patch: float tolerance.
    oy, ox = offset
    ref = np_train_patch(e['image'], (0, 0), flip, alpha, mean[oy:oy + S, ox:ox + S],
                         eigval, eigvec, 0.5)
    np.testing.assert_allclose(out[i], ref, atol=1e-3)
    # Host patch == the exact patch of the R x R image (geometry exact).
    exact = np_train_patch(base, offset, flip, alpha, mean, eigval, eigvec, 0.5)
    if fast:  # rounded window: at most a sub-pixel shift on a smooth image
      assert np.abs(out[i] - exact).mean() < 1.0 and np.abs(out[i] - exact).max() < 8.0
    else:
      np.testing.assert_allclose(out[i], exact, atol=ROUND * 0.5)
  assert len({tuple(e['offset']) for e in examples}) > 6                # offsets vary
  assert {bool(e['flip']) for e in examples} == {False, True}           # both reflections
  assert batch['offset'].max() <= R - S                                 # inside the image
  # Same seed, same example (stateless).
  again = pp.train_example(encoded, tf.constant([7, 3], tf.int64), recipe)
  np.testing.assert_array_equal(again['image'], examples[3]['image'])


def test_pca_noise_has_the_covariance_of_the_eigenvalues():
  """Noise 255 P (alpha * lambda), alpha ~ N(0, 0.1^2): cov = 255^2 P diag(0.1 lambda)^2 P^T.

  The alphas are the host's draws; the published constants' convention.
  """
  config = ilsvrc.get_config()
  eigval = np.asarray(config.input.published_pca_eigval, np.float64)
  eigvec = np.asarray(config.input.published_pca_eigvec, np.float64)
  std, n = 0.1, 20_000
  recipe = _recipe(resize_size=16, crop_size=8, flip=True, pca_std=std)
  grey = tf.fill([20, 24, 3], tf.constant(128, tf.uint8))
  ds = tf.data.Dataset.range(n).map(
      lambda i: pp.train_example(grey, tf.stack([tf.constant(5, tf.int64), i]), recipe),
      num_parallel_calls=tf.data.AUTOTUNE).batch(n)
  batch = next(iter(ds))
  batch = {k: v.numpy() for k, v in batch.items()}
  stats = augment.make_stats(np.full((1, 1, 3), 128.0), eigval, eigvec)
  images = np.asarray(augment.train_images(batch, stats))  # (n, 8, 8, 3)
  noise = images[:, 0, 0].astype(np.float64)                # pixel 128 - mean 128 + noise
  np.testing.assert_allclose(images, np.broadcast_to(noise[:, None, None], images.shape),
                             atol=1e-4)  # the same offset on every pixel
  expected = 255.0**2 * eigvec @ np.diag((std * eigval)**2) @ eigvec.T
  assert np.all(np.abs(noise.mean(0)) < 4 * np.sqrt(np.diag(expected) / n))
  np.testing.assert_allclose(np.cov(noise.T), expected, rtol=0.05, atol=0.05 * expected.max())
  # Along the eigenvectors: independent, standard deviation 255 * 0.1 * lambda_i.
  np.testing.assert_allclose((noise @ eigvec).std(0), 255 * std * eigval, rtol=0.03)


# --------------------------------------------------------------------------
# Evaluation: the centre patch and the ten patches
# --------------------------------------------------------------------------


@pytest.mark.parametrize('antialias', [False, True])
def test_test_patches_equal_the_numpy_recipe(jpeg, antialias):
  encoded, pixels = jpeg
  base = np_base_image(pixels, antialias)
  (mean, _, _), stats = _stats(np.random.default_rng(1))
  recipe = _recipe(antialias=antialias)
  host_base = pp.eval_example(encoded, recipe, multi_crop=True).numpy()   # (R, R, 3)
  host_centre = pp.eval_example(encoded, recipe).numpy()                  # (S, S, 3)
  assert host_base.dtype == np.uint8 and host_base.shape == (R, R, 3)
  np.testing.assert_allclose(host_base, base, atol=ROUND)
  c = (R - S) // 2
  np.testing.assert_allclose(host_centre, base[c:c + S, c:c + S], atol=ROUND)

  eval_images = jax.jit(augment.eval_images, static_argnums=(2, 3, 4))
  ten = np.asarray(eval_images(host_base[None], stats, S, 10, 0.5))[0]
  assert ten.shape == (10, S, S, 3)
  np.testing.assert_allclose(ten, np_test_patches(host_base, mean, scale=0.5), atol=1e-3)
  np.testing.assert_allclose(ten, np_test_patches(base, mean, scale=0.5), atol=ROUND * 0.5)
  five = np.asarray(eval_images(host_base[None], stats, S, 5, 0.5))[0]
  np.testing.assert_array_equal(five, ten[:5])  # no reflections: the first five
  centre = np.asarray(eval_images(host_centre[None], stats, S, 1, 0.5))[0]
  np.testing.assert_allclose(centre, (host_centre - mean[c:c + S, c:c + S]) * 0.5, atol=1e-3)
  np.testing.assert_allclose(centre, ten[4], atol=ROUND)  # the same centre patch
  # Per-channel mean: broadcast, not cut.
  channel = augment.make_stats(mean.mean((0, 1)).reshape(1, 1, 3))
  ten_c = np.asarray(eval_images(host_base[None], channel, S, 10, 1.0))[0]
  np.testing.assert_allclose(ten_c, np_test_patches(host_base, mean.mean((0, 1))), atol=1e-3)


def test_eval_without_a_central_crop_sends_the_five_patches(jpeg):
  encoded, pixels = jpeg
  recipe = _recipe(central_crop=False)
  five = pp.eval_example(encoded, recipe, multi_crop=True).numpy()  # (5, S, S, 3)
  h, w = 256, round(W * 256 / H)  # the whole resized image, 256 x 358
  resized = np_resize_bilinear(pixels, h, w)
  m, n = h - S, w - S
  for i, (oy, ox) in enumerate(((0, 0), (0, n), (m, 0), (m, n), (m // 2, n // 2))):
    np.testing.assert_allclose(five[i], resized[oy:oy + S, ox:ox + S], atol=ROUND)
  stats = augment.make_stats(np.full((1, 1, 3), 100.0))
  ten = np.asarray(augment.eval_images(five[None], stats, S, 10))[0]
  np.testing.assert_allclose(ten[5:], (five[:, :, ::-1] - 100.0), atol=1e-4)


# --------------------------------------------------------------------------
# Prepared R x R files: cropped without resampling
# --------------------------------------------------------------------------


def test_an_r_by_r_jpeg_is_cropped_without_resampling():
  # Sharp colour edges: a window decoded without a margin differs at its border.
  rgb = np.random.default_rng(4).integers(0, 256, (R, R, 3), dtype=np.uint8)
  encoded = tf.constant(fx.jpeg_bytes(rgb, quality=90))
  pixels = tf.io.decode_jpeg(encoded, channels=3).numpy()  # the whole decode
  recipe = _recipe()
  odd = 0  # libjpeg's windows at odd x differ from the full decode at their border
  for i in range(12):
    e = pp.train_example(encoded, tf.constant([2, i], tf.int64), recipe)
    oy, ox = e['offset'].numpy()
    np.testing.assert_array_equal(e['image'].numpy(), pixels[oy:oy + S, ox:ox + S])
    odd += ox % 2
  assert odd
  np.testing.assert_array_equal(pp.eval_example(encoded, recipe, multi_crop=True), pixels)
  c = (R - S) // 2
  np.testing.assert_array_equal(pp.eval_example(encoded, recipe), pixels[c:c + S, c:c + S])
  # One pixel larger takes the resampling path (and is not equal).
  bigger = tf.constant(fx.jpeg_bytes(fx.smooth_image(np.random.default_rng(4), R + 1, R)))
  assert pp.eval_example(bigger, recipe, multi_crop=True).shape == (R, R, 3)


@pytest.mark.parametrize('change', [
    {}, {'random_crop': False}, {'central_crop': False}, {'fast_train_resample': False},
    {'antialias': True}, {'random_resized_crop': True}])
def test_prepared_jpegs_give_the_general_training_examples(change):
  """base_jpegs (the shape known in advance: no header read, no branch) gives the
  examples of the general computation for the same R x R JPEG and seed, traced
  as tf.data traces them."""
  rgb = np.random.default_rng(5).integers(0, 256, (R, R, 3), dtype=np.uint8)
  encoded = tf.constant(fx.jpeg_bytes(rgb, quality=90))
  pixels = tf.io.decode_jpeg(encoded, channels=3).numpy()
  general = _recipe(**change)
  assert not general.base_jpegs
  graph = lambda recipe: tf.function(lambda x, seed: pp.train_example(x, seed, recipe))
  prepared, everything = graph(general._replace(base_jpegs=True)), graph(general)
  for i in range(6):
    seed = tf.constant([9, i], tf.int64)
    a, b = prepared(encoded, seed), everything(encoded, seed)
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
    if not general.random_resized_crop:  # the S x S piece of the file's pixels
      oy, ox = a['offset'].numpy()
      np.testing.assert_array_equal(a['image'], pixels[oy:oy + S, ox:ox + S])


# --------------------------------------------------------------------------
# Statistics: one PCA convention for computed and published constants
# --------------------------------------------------------------------------


def test_pca_convention_pooled_covariance_of_unit_scale_pixels():
  """stats.compute: eigenvalues of the covariance of [0, 1] pixels, pooled over
  all pixels of all images (between-image colour shifts included)."""
  rng = np.random.default_rng(0)
  within = np.array([[4.0, 2.0, 1.0], [2.0, 3.0, 1.0], [1.0, 1.0, 2.0]]) * 1e-3
  between = np.array([[3.0, 2.5, 2.0], [2.5, 3.0, 2.5], [2.0, 2.5, 3.0]]) * 1e-2
  n, size = 400, 8
  shift = rng.multivariate_normal(np.zeros(3), between, n)            # per image
  noise = rng.multivariate_normal(np.zeros(3), within, (n, size, size))
  images = 255.0 * (0.45 + shift[:, None, None] + noise)              # 0-255
  stats = stats_lib.compute(np.split(images, 8))
  expected = np.sort(np.linalg.eigvalsh(within + between))[::-1]
  np.testing.assert_allclose(stats.eigval, expected, rtol=0.15)
  assert stats.eigval[0] > 2 * np.linalg.eigvalsh(within).max()  # not per-image

  # The published constants satisfy the same convention for ImageNet: their
  # covariance P diag(lambda) P^T gives per-channel standard deviations of
  # [0, 1] pixels near ImageNet's pooled ~0.27 (the project's 258-image
  # sample: 0.270, 0.262, 0.278), not the per-image ~0.226 (torchvision's
  # 0.229, 0.224, 0.225), nor what lambda as a standard deviation would give.
  config = ilsvrc.get_config()
  published = stats_lib.published(stats_lib.Settings.of(**config.input))
  p, lam = published.eigvec.astype(np.float64), published.eigval.astype(np.float64)
  np.testing.assert_allclose(p.T @ p, np.eye(3), atol=2e-3)
  channel_std = np.sqrt(np.diag(p @ np.diag(lam) @ p.T))
  assert np.all((channel_std > 0.25) & (channel_std < 0.31)), channel_std
  assert np.all(np.sqrt(np.diag(p @ np.diag(lam**2) @ p.T)) < 0.15)
  assert np.all(np.diff(lam) < 0)


def test_device_statistics_follow_config_input(tmp_path):
  config = ilsvrc.get_config()
  config.input.resize_size = 16
  # published: mean image of the channel means
  stats = stats_lib.for_device(stats_lib.Settings.of(**config.input))
  assert stats.mean.shape == (16, 16, 3)
  np.testing.assert_allclose(stats.mean[3, 5], (123.68, 116.78, 103.94), rtol=1e-6)
  np.testing.assert_allclose(stats.eigval, (0.2175, 0.0188, 0.0045), rtol=1e-6)
  config.input.mean = 'channel'
  assert stats_lib.for_device(stats_lib.Settings.of(**config.input)).mean.shape == (1, 1, 3)
  config.input.mean, config.input.pca_lighting = 'none', 0.0
  none = stats_lib.for_device(stats_lib.Settings.of(**config.input))
  assert not np.any(none.mean) and not np.any(none.eigval)
  config.input.mean, config.input.random_resized_crop = 'image', True
  with pytest.raises(ValueError, match='central_crop'):
    stats_lib.for_device(stats_lib.Settings.of(**config.input))


# --------------------------------------------------------------------------
# Prefetch to device
# --------------------------------------------------------------------------


def test_prefetch_reads_ahead_and_keeps_the_order():
  mesh = parallel.make_mesh((-1, 1))
  sharding = parallel.batch_sharding(mesh)
  read = []

  def source():
    for i in range(6):
      read.append(i)
      yield {'image': np.full((8, 2), i, np.uint8), 'label': np.arange(8, dtype=np.int32)}

  it = parallel.prefetch(source(), sharding, 2)
  first = next(it)
  assert read == [0, 1] and first['image'].sharding == sharding
  second = next(it)
  assert read == [0, 1, 2]  # one more transferred as one is consumed
  rest = list(it)
  assert [int(b['image'][0, 0]) for b in [first, second] + rest] == list(range(6))
  # Device-resident batches with this sharding pass through untouched.
  resident = {'image': jax.device_put(jnp.zeros((8, 2)), sharding)}
  assert parallel.global_batch(resident, sharding)['image'] is resident['image']
