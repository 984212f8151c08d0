"""Input pipeline (sections 4.1 and 6): crop geometry, PCA lighting, order, decoding.

Hermetic: every image is written here; nothing is downloaded.
"""

import io
import logging
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from alexnet_jax import data_sources
from alexnet_jax import input_pipeline as ip
from alexnet_jax import preprocessing as pp
from alexnet_jax import stats as stats_lib
from configs import digits
from configs import ilsvrc
from tests import ilsvrc_fixtures as fx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R, S = 256, 227
H, W = 300, 420  # the non-square test JPEG: shorter side 300 -> 256


# --------------------------------------------------------------------------
# NumPy reference of section 4.1's geometry
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


def np_base_image(pixels: np.ndarray, antialias: bool) -> np.ndarray:
  """Shorter side to R, then the central R x R crop (section 4.1)."""
  h, w = pixels.shape[:2]
  rh, rw = round(h * R / min(h, w)), round(w * R / min(h, w))
  if antialias:  # TF's antialiased kernel is the reference here
    resized = tf.image.resize(pixels, [rh, rw], antialias=True).numpy()
  else:
    resized = np_resize_bilinear(pixels, rh, rw)
  oy, ox = (rh - R) // 2, (rw - R) // 2
  return resized[oy:oy + R, ox:ox + R]


@pytest.fixture(scope='module')
def jpeg_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('jpeg') / 'wide.JPEG'
  path.write_bytes(fx.jpeg_bytes(fx.smooth_image(np.random.default_rng(1), H, W)))
  return str(path)


def _recipe(**kw):
  return pp.Recipe(**{'resize_size': R, 'crop_size': S, 'pca_std': 0.0,
                      'flip': False, **kw})


def _find_crop(patch, base):
  """(oy, ox, flipped) of the S x S crop of base that patch equals, else None."""
  for flipped in (False, True):
    target = patch[:, ::-1] if flipped else patch
    for oy in range(R - S + 1):
      for ox in range(R - S + 1):
        probe = base[oy + 100:oy + 104, ox + 100:ox + 104] - target[100:104, 100:104]
        if (np.abs(probe).max() < 0.05 and
            np.abs(base[oy:oy + S, ox:ox + S] - target).max() < 0.05):
          return oy, ox, flipped
  return None


@pytest.mark.parametrize('antialias', [False, True])
def test_centre_and_ten_crops_match_numpy_reference(jpeg_file, antialias):
  encoded = tf.io.read_file(jpeg_file)
  pixels = tf.io.decode_jpeg(encoded, channels=3).numpy()
  assert pixels.shape == (H, W, 3)
  base = np_base_image(pixels, antialias)
  recipe = _recipe(antialias=antialias)

  fused_base, _ = pp.base_image(encoded, R, antialias=antialias)
  np.testing.assert_allclose(fused_base.numpy(), base, atol=0.05)

  centre = pp.eval_image(encoded, recipe).numpy()
  c = (R - S) // 2  # 14
  np.testing.assert_allclose(centre, base[c:c + S, c:c + S], atol=0.05)

  ten = pp.eval_image(encoded, _recipe(antialias=antialias, flip=True), ten_crop=True).numpy()
  assert ten.shape == (10, S, S, 3)
  # A recipe that trains without reflections is tested on the five patches only.
  five = pp.eval_image(encoded, recipe, ten_crop=True).numpy()
  assert five.shape == (5, S, S, 3)
  np.testing.assert_allclose(five, ten[:5], atol=1e-4)
  m = R - S  # 29
  corners = {'top_left': (0, 0), 'top_right': (0, m), 'bottom_left': (m, 0),
             'bottom_right': (m, m), 'centre': (c, c)}
  for i, name in enumerate(pp.TEN_CROP_ORDER):
    oy, ox = corners[name]
    crop = base[oy:oy + S, ox:ox + S]
    np.testing.assert_allclose(ten[i], crop, atol=0.05, err_msg=name)
    np.testing.assert_allclose(ten[i + 5], crop[:, ::-1], atol=0.05, err_msg=name)


def test_random_crops_and_flips_are_crops_of_the_base_image(jpeg_file):
  encoded = tf.io.read_file(jpeg_file)
  base = np_base_image(tf.io.decode_jpeg(encoded, channels=3).numpy(), False)
  recipe = _recipe(flip=True, fast_train_resample=False)  # the exact grid
  found = [_find_crop(pp.train_image(encoded, tf.constant([7, i], tf.int64),
                                     recipe).numpy(), base) for i in range(8)]
  assert None not in found, found
  assert len({(oy, ox) for oy, ox, _ in found}) > 4           # offsets vary
  assert {f for _, _, f in found} == {False, True}            # both reflections
  assert max(max(oy, ox) for oy, ox, _ in found) <= R - S     # inside the image
  # Same seed, same patch (stateless).
  a = pp.train_image(encoded, tf.constant([7, 3], tf.int64), recipe)
  b = pp.train_image(encoded, tf.constant([7, 3], tf.int64), recipe)
  np.testing.assert_array_equal(a, b)


def test_fast_training_patches_are_within_a_pixel_of_exact(jpeg_file):
  """rounded_window (training default) vs the exact grid, same random draws."""
  encoded = tf.io.read_file(jpeg_file)
  for i in range(6):
    seed = tf.constant([3, i], tf.int64)
    fast = pp.train_image(encoded, seed, _recipe(flip=True)).numpy()
    exact = pp.train_image(encoded, seed, _recipe(flip=True, fast_train_resample=False)).numpy()
    # Same offset and reflection; at most a sub-pixel shift on a smooth image.
    assert np.abs(fast - exact).mean() < 1.0
    assert np.abs(fast - exact).max() < 8.0
  # The digits' 8x8 -> 76 upscaling goes through the same path.
  digit = tf.constant(np.arange(64, dtype=np.uint8).reshape(8, 8, 1) * 4)
  recipe = pp.Recipe(resize_size=76, crop_size=67, flip=False, pca_std=0.0)
  assert pp.train_image(digit, tf.constant([0, 1], tf.int64), recipe).shape == (67, 67, 3)


def test_mean_image_is_cut_at_the_crop_offset(jpeg_file):
  encoded = tf.io.read_file(jpeg_file)
  mean = np.random.default_rng(0).uniform(0, 255, (R, R, 3)).astype(np.float32)
  plain = pp.eval_image(encoded, _recipe(flip=True), ten_crop=True).numpy()
  minus = pp.eval_image(encoded, _recipe(mean=mean, flip=True), ten_crop=True).numpy()
  m, c = R - S, (R - S) // 2
  offsets = [(0, 0), (0, m), (m, 0), (m, m), (c, c)]
  for i, (oy, ox) in enumerate(offsets):
    cut = mean[oy:oy + S, ox:ox + S]
    np.testing.assert_allclose(minus[i], plain[i] - cut, atol=1e-3)
    np.testing.assert_allclose(minus[i + 5], plain[i + 5] - cut[:, ::-1], atol=1e-3)


def test_pca_lighting_has_the_covariance_of_the_eigenvalues():
  """Noise 255 P (alpha * lambda), alpha ~ N(0, 0.1^2): cov = 255^2 P diag(0.1 lambda)^2 P^T."""
  config = ilsvrc.get_config()
  eigval = np.asarray(config.input.published_pca_eigval, np.float32)
  eigvec = np.asarray(config.input.published_pca_eigvec, np.float32)
  std, n = 0.1, 20_000
  recipe = pp.Recipe(resize_size=16, crop_size=8, flip=True, pca_std=std,
                     eigval=eigval, eigvec=eigvec)
  grey = tf.fill([20, 24, 3], tf.constant(128, tf.uint8))
  ds = tf.data.Dataset.range(n).map(
      lambda i: pp.train_image(grey, tf.stack([tf.constant(5, tf.int64), i]),
                               recipe)[0, 0] - 128.0,
      num_parallel_calls=tf.data.AUTOTUNE).batch(n)
  noise = next(iter(ds)).numpy().astype(np.float64)  # (n, 3)
  expected = 255.0**2 * eigvec @ np.diag((std * eigval)**2) @ eigvec.T
  assert np.all(np.abs(noise.mean(0)) < 4 * np.sqrt(np.diag(expected) / n))
  np.testing.assert_allclose(np.cov(noise.T), expected, rtol=0.05,
                             atol=0.05 * expected.max())
  # Along the eigenvectors: independent, standard deviation 255 * 0.1 * lambda_i.
  along = noise @ eigvec
  np.testing.assert_allclose(along.std(0), 255 * std * eigval, rtol=0.03)


def test_random_resized_crop_option():
  config = digits.get_config()
  config.input.random_resized_crop = True
  batch = next(ip.train_iterator(config, batch_size=8))
  assert batch['image'].shape == (8, 67, 67, 3)
  config.input.mean = 'image'
  with pytest.raises(ValueError, match='central_crop'):
    ip.make_recipe(config)


# --------------------------------------------------------------------------
# Decoding: greyscale, CMYK, PNG named .JPEG, corrupt files
# --------------------------------------------------------------------------


def _png_bytes(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, 'PNG')
  return buf.getvalue()


def test_greyscale_cmyk_and_png_disguised_as_jpeg_decode_to_rgb():
  rgb = fx.smooth_image(np.random.default_rng(2), 40, 60)
  grey = pp.decode(tf.constant(fx.jpeg_bytes(rgb, 'L'))).numpy()
  assert grey.shape == (40, 60, 3)
  np.testing.assert_array_equal(grey[..., 0], grey[..., 1])
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])

  cmyk_bytes = fx.jpeg_bytes(rgb, 'CMYK', quality=95)
  cmyk = pp.decode(tf.constant(cmyk_bytes)).numpy()
  pil = np.asarray(Image.open(io.BytesIO(cmyk_bytes)).convert('RGB'))
  assert cmyk.shape == (40, 60, 3)
  assert np.abs(cmyk.astype(float) - pil).mean() < 2

  png = tf.constant(_png_bytes(rgb))  # a PNG, as ImageNet's n02105855_2933.JPEG
  np.testing.assert_array_equal(pp.decode(png).numpy(), rgb)
  # The fused crop path reads it too.
  window = pp.read_window(png, tf.constant([5, 7, 20, 30])).numpy()
  np.testing.assert_array_equal(window, rgb[5:25, 7:37])


def _write_folder(root, *, classes=('cat', 'dog', 'owl'), per_class=6, val=2,
                  corrupt=False):
  """root/{train,val}/<class>/*.jpg with greyscale, CMYK and PNG-named-.jpg files."""
  rng = np.random.default_rng(3)
  for split, n in (('train', per_class), ('val', val)):
    for c in classes:
      d = os.path.join(root, split, c)
      os.makedirs(d, exist_ok=True)
      for i in range(n):
        img = fx.smooth_image(rng, 60 + 7 * i, 80 - 5 * i)
        data = {0: fx.jpeg_bytes(img, 'L'), 1: fx.jpeg_bytes(img, 'CMYK'),
                2: _png_bytes(img)}.get(i, fx.jpeg_bytes(img))
        with open(os.path.join(d, f'{c}_{i}.jpg'), 'wb') as f:
          f.write(data)
  bad = []
  if corrupt:
    good = fx.jpeg_bytes(fx.smooth_image(rng, 64, 64))
    for split, name, data in (('train', 'truncated.jpg', good[:len(good) // 2]),
                              ('train', 'not_an_image.jpg', b'<html>404</html>'),
                              ('val', 'empty.jpg', b'')):
      path = os.path.join(root, split, classes[0], name)
      with open(path, 'wb') as f:
        f.write(data)
      bad.append(path)
  return bad


def _folder_config(root, input_size=67, resize=76):
  config = digits.get_config()
  config.dataset.source = 'folder'
  config.dataset.folder = str(root)
  config.dataset.name = 'folder'
  config.model.num_classes = 3
  config.model.input_size = input_size
  config.input.resize_size = resize
  config.input.flip = True
  config.input.pca_lighting = 0.1
  config.input.mean = 'channel'
  return config


def test_folder_source_and_corrupt_files_reported_by_name(tmp_path, caplog):
  bad = _write_folder(tmp_path, corrupt=True)
  config = _folder_config(tmp_path)
  info = ip.dataset_info(config)
  assert info == ip.DatasetInfo(num_train=3 * 6 + 2, num_eval=3 * 2 + 1, num_classes=3)

  caplog.set_level(logging.WARNING)
  it = ip.train_iterator(config, batch_size=5)
  batches = [next(it) for _ in range(8)]  # two passes of 4 steps
  for b in batches:
    assert b['image'].shape == (5, 67, 67, 3) and b['image'].dtype == np.float32
    assert np.all(np.abs(b['image']).reshape(5, -1).max(1) > 0)  # no blank image
    assert set(b['label']) <= {0, 1, 2}
  # Resume continues the same stream, corrupt files included.
  resumed = ip.train_iterator(config, batch_size=5, start_step=5)
  for b in batches[5:]:
    r = next(resumed)
    np.testing.assert_array_equal(r['image'], b['image'])
    np.testing.assert_array_equal(r['label'], b['label'])

  evals = list(ip.eval_iterator(config, batch_size=4, ten_crop=True))
  assert [e['image'].shape for e in evals] == [(4, 10, 67, 67, 3)] * 2
  mask = np.concatenate([e['mask'] for e in evals])
  assert mask.sum() == 6 and len(mask) == 8  # 7 images, one corrupt, one pad
  labels = np.concatenate([e['label'] for e in evals])[mask]
  assert sorted(labels) == [0, 0, 1, 1, 2, 2]

  reported = ip.corrupt_images()
  for path in bad:
    assert path in reported
    assert os.path.basename(path) in caplog.text


def test_missing_datasets_say_how_to_prepare_them(tmp_path):
  config = ilsvrc.get_config()
  config.dataset.data_dir = str(tmp_path / 'tfds')
  with pytest.raises(ip.DatasetNotFoundError) as e:
    ip.dataset_info(config)
  message = str(e.value)
  for part in ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar',
               os.path.join(str(tmp_path / 'tfds'), 'downloads', 'manual'),
               'python -m alexnet_jax.prepare --config=configs/ilsvrc.py --tfds_build '
               f'--config.dataset.data_dir={tmp_path / "tfds"}',
               'download_and_prepare'):
    assert part in message
  assert isinstance(e.value, FileNotFoundError)

  config.dataset.name = 'no_such_dataset_xyz'
  with pytest.raises(ip.DatasetNotFoundError, match='no_such_dataset_xyz'):
    ip.dataset_info(config)

  config = _folder_config(tmp_path / 'nothing_here')
  with pytest.raises(ip.DatasetNotFoundError, match='one sub-directory per class'):
    ip.dataset_info(config)


# --------------------------------------------------------------------------
# Order: determinism, resume, processes; evaluation counts each image once
# --------------------------------------------------------------------------


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_resume_continues_the_stream_across_passes():
  config = digits.get_config()
  config.input.flip = True  # exercise more of the random stream
  b = 64                    # 1437 // 64 = 22 steps per pass
  full = _take(ip.train_iterator(config, batch_size=b), 26)
  for k in (1, 21, 22, 24):
    tail = _take(ip.train_iterator(config, batch_size=b, start_step=k), 26 - k)
    for x, y in zip(full[k:], tail):
      np.testing.assert_array_equal(x['image'], y['image'])
      np.testing.assert_array_equal(x['label'], y['label'])
  # Passes differ in order and augmentation; each pass has no repeats.
  assert not np.array_equal(full[0]['label'], full[22]['label'])
  other_seed = digits.get_config()
  other_seed.seed = 1
  assert not np.array_equal(next(ip.train_iterator(other_seed, batch_size=b))['image'],
                            full[0]['image'])


def test_processes_assemble_the_global_batch():
  config = digits.get_config()
  single = _take(ip.train_iterator(config, batch_size=32), 3)
  parts = [_take(ip.train_iterator(config, batch_size=16, process_index=p,
                                   process_count=2), 3) for p in range(2)]
  for s, (a, b) in enumerate(zip(*parts)):
    np.testing.assert_array_equal(np.concatenate([a['label'], b['label']]),
                                  single[s]['label'])
    np.testing.assert_array_equal(np.concatenate([a['image'], b['image']]),
                                  single[s]['image'])


@pytest.mark.parametrize('process_count,batch', [(1, 128), (3, 50), (7, 16)])
def test_eval_counts_each_image_once(process_count, batch):
  config = digits.get_config()
  config.eval.ten_crop = False
  _, expected = data_sources.digits_arrays('eval')
  labels, lengths = [], []
  for p in range(process_count):
    batches = list(ip.eval_iterator(config, batch_size=batch, process_index=p,
                                    process_count=process_count))
    lengths.append(len(batches))
    for x in batches:
      assert x['image'].shape == (batch, 67, 67, 3)
      assert not x['image'][~x['mask']].any()   # padding is blank
      labels.append(x['label'][x['mask']])
  assert len(set(lengths)) == 1                  # same number of batches everywhere
  np.testing.assert_array_equal(np.concatenate(labels), expected)


# --------------------------------------------------------------------------
# Statistics (alexnet_jax.stats)
# --------------------------------------------------------------------------


def test_stats_compute_save_load(tmp_path):
  rng = np.random.default_rng(0)
  mix = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.4]])
  batches = [np.clip(100 + rng.normal(size=(4, 8, 8, 3)) @ mix.T * 20, 0, 255)
             for _ in range(5)]
  stats = stats_lib.compute(batches)
  pixels = np.concatenate(batches).reshape(-1, 3) / 255.0
  cov = np.cov(pixels.T, bias=True)
  np.testing.assert_allclose(stats.mean_image, np.concatenate(batches).mean(0), rtol=1e-5)
  np.testing.assert_allclose(stats.eigvec @ np.diag(stats.eigval) @ stats.eigvec.T,
                             cov, atol=1e-6)
  assert np.all(np.diff(stats.eigval) <= 0)
  stats_lib.save(stats, str(tmp_path / 's.npz'))
  loaded = stats_lib.load(str(tmp_path / 's.npz'))
  np.testing.assert_array_equal(loaded.mean_image, stats.mean_image)
  np.testing.assert_array_equal(loaded.eigvec, stats.eigvec)


def test_stats_command_and_config(tmp_path):
  _write_folder(tmp_path / 'data')
  out = tmp_path / 'stats.npz'
  cmd = [sys.executable, '-m', 'alexnet_jax.stats', '--config=configs/digits.py',
         '--config.dataset.source=folder', f'--config.dataset.folder={tmp_path / "data"}',
         '--num_images=10', f'--output={out}']
  env = dict(os.environ, PYTHONPATH=ROOT)
  subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
  stats = stats_lib.load(str(out))
  assert stats.mean_image.shape == (76, 76, 3) and stats.num_images == 10

  config = _folder_config(tmp_path / 'data')
  config.input.stats_path = str(out)
  recipe = ip.make_recipe(config)
  np.testing.assert_allclose(recipe.mean.reshape(3), stats.channel_mean)
  config.input.resize_size = 80
  with pytest.raises(ValueError, match='resize_size'):
    ip.make_recipe(config)
  # Without a file: the published constants, named as such.
  config = ilsvrc.get_config()
  published = stats_lib.for_config(config)
  assert published.source == 'published ImageNet constants'
  np.testing.assert_allclose(published.channel_mean, (123.68, 116.78, 103.94), rtol=1e-6)
