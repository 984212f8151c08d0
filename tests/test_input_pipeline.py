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


# --------------------------------------------------------------------------
# Batches: uint8 pixels and the device's parameters (tests/test_augment.py
# checks the recipe against a NumPy reference)
# --------------------------------------------------------------------------


def test_random_resized_crop_option():
  config = digits.get_config()
  config.input.random_resized_crop = True
  batch = next(ip.train_iterator(ip.resolve(config), batch_size=8))
  assert batch['image'].shape == (8, 67, 67, 3) and batch['image'].dtype == np.uint8
  config.input.mean = 'image'
  with pytest.raises(ValueError, match='central_crop'):
    stats_lib.for_device(stats_lib.Settings.of(**config.input))


def _position_png(size=256) -> tf.Tensor:
  """A PNG whose red channel is the column and green channel the row (0..255)."""
  x = np.broadcast_to(np.arange(size, dtype=np.uint8)[None, :], (size, size))
  image = np.stack([x, x.T, np.zeros_like(x)], -1)
  return tf.io.encode_png(image)


def _window_sides(recipe, seeds) -> np.ndarray:
  """(n, 2) width and height, in source pixels, of the windows the training
  patches of `seeds` were resampled from (read back from the position PNG)."""
  png, sides = _position_png(), []
  for seed in seeds:
    patch = pp.train_example(png, tf.constant([seed, 7], tf.int64), recipe)['image'].numpy()
    span = patch.max((0, 1)).astype(float) - patch.min((0, 1))  # (3,)
    s = recipe.crop_size
    sides.append(span[:2] * s / (s - 1))  # S samples cover (S - 1) / S of the window
  return np.array(sides)


def _ilsvrc_recipe() -> pp.Recipe:
  """configs/ilsvrc.py's host recipe (input_pipeline.make_recipe, no dataset)."""
  config = ilsvrc.get_config()
  return ip.make_recipe(config.model.input_size, **config.input)


@pytest.mark.parametrize('area, aspect, want_w, want_h', [
    ((0.25, 0.25), (1.0, 1.0), 128, 128),
    ((1.0, 1.0), (1.0, 1.0), 256, 256),
    ((0.5, 0.5), (2.0, 2.0), 256, 128),
])
def test_random_resized_crop_uses_rrc_area_and_aspect(area, aspect, want_w, want_h):
  """The window of an Inception-style crop has the configured area fraction and
  aspect ratio (width / height), at a position that varies with the seed."""
  recipe = _ilsvrc_recipe()._replace(
      resize_size=256, crop_size=64, random_resized_crop=True, rrc_area=area,
      rrc_aspect=aspect, flip=False, pca_std=0.0)
  sides = _window_sides(recipe, range(6))
  np.testing.assert_allclose(sides[:, 0], want_w, atol=6)
  np.testing.assert_allclose(sides[:, 1], want_h, atol=6)
  # The paper's crops instead: an S x S piece of the 256 x 256 image, no resampling.
  paper = recipe._replace(random_resized_crop=False)
  np.testing.assert_allclose(_window_sides(paper, range(3)), 64, atol=0.01)
  if area[0] < 1:  # a smaller window moves with the seed
    png = _position_png()
    corners = {tuple(pp.train_example(png, tf.constant([k, 7], tf.int64), recipe)['image']
                     .numpy()[0, 0, :2]) for k in range(6)}
    assert len(corners) > 1


def test_bytes_per_example_sent_to_the_device(tmp_path):
  """Section 4.1's 227 patch as uint8 plus 25 bytes of draws; 10-crop: one 256 image."""
  _write_folder(tmp_path)
  config = _folder_config(tmp_path, input_size=S, resize=R)
  train = next(ip.train_iterator(ip.resolve(config), batch_size=4))
  assert {k: (v.dtype, v.shape[1:]) for k, v in train.items()} == {
      'image': (np.uint8, (S, S, 3)), 'offset': (np.int32, (2,)), 'flip': (bool, ()),
      'alpha': (np.float32, (3,)), 'label': (np.int32, ())}
  per_example = lambda b: sum(v[0].nbytes for k, v in b.items() if k != 'mask')
  assert per_example(train) == 154_612 <= 155_000
  centre = next(ip.eval_iterator(ip.resolve(config), batch_size=4))
  assert per_example(centre) == S * S * 3 + 4
  ten = next(ip.eval_iterator(ip.resolve(config), batch_size=4, ten_crop=True))
  assert ten['image'].shape == (4, R, R, 3) and per_example(ten) == R * R * 3 + 4 <= 197_000


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
  info = ip.resolve(config).info
  assert info == ip.DatasetInfo(num_train=3 * 6 + 2, num_eval=3 * 2 + 1, num_classes=3)

  caplog.set_level(logging.WARNING)
  it = ip.train_iterator(ip.resolve(config), batch_size=5)
  batches = [next(it) for _ in range(8)]  # two passes of 4 steps
  for b in batches:
    assert b['image'].shape == (5, 67, 67, 3) and b['image'].dtype == np.uint8
    assert np.all(np.abs(b['image']).reshape(5, -1).max(1) > 0)  # no blank image
    assert set(b['label']) <= {0, 1, 2}
  # Resume continues the same stream, corrupt files included.
  resumed = ip.train_iterator(ip.resolve(config), batch_size=5, start_step=5)
  for b in batches[5:]:
    r = next(resumed)
    for k in b:  # pixels, draws and labels
      np.testing.assert_array_equal(r[k], b[k], err_msg=k)

  evals = list(ip.eval_iterator(ip.resolve(config), batch_size=4, ten_crop=True))
  assert [e['image'].shape for e in evals] == [(4, 76, 76, 3)] * 2  # the device cuts 10
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
    ip.resolve(config).info
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
    ip.resolve(config).info

  config = _folder_config(tmp_path / 'nothing_here')
  with pytest.raises(ip.DatasetNotFoundError, match='one sub-directory per class'):
    ip.resolve(config).info


# --------------------------------------------------------------------------
# Order: determinism, resume, processes; evaluation counts each image once
# --------------------------------------------------------------------------


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_resume_continues_the_stream_across_passes():
  config = digits.get_config()
  config.input.flip = True  # exercise more of the random stream
  b = 64                    # 1437 // 64 = 22 steps per pass
  full = _take(ip.train_iterator(ip.resolve(config), batch_size=b), 26)
  for k in (1, 21, 22, 24):
    tail = _take(ip.train_iterator(ip.resolve(config), batch_size=b, start_step=k), 26 - k)
    for x, y in zip(full[k:], tail):
      for key in x:  # pixels, draws and labels
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)
  # Passes differ in order and augmentation; each pass has no repeats.
  assert not np.array_equal(full[0]['label'], full[22]['label'])
  other_seed = digits.get_config()
  other_seed.seed = 1
  assert not np.array_equal(next(ip.train_iterator(ip.resolve(other_seed), batch_size=b))['image'],
                            full[0]['image'])


def test_processes_assemble_the_global_batch():
  config = digits.get_config()
  single = _take(ip.train_iterator(ip.resolve(config), batch_size=32), 3)
  parts = [_take(ip.train_iterator(ip.resolve(config), batch_size=16, process_index=p,
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
    batches = list(ip.eval_iterator(ip.resolve(config), batch_size=batch, process_index=p,
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
  device = stats_lib.for_device(stats_lib.Settings.of(**config.input))
  np.testing.assert_allclose(np.reshape(device.mean, 3), stats.channel_mean)
  config.input.resize_size = 80
  with pytest.raises(ValueError, match='resize_size'):
    stats_lib.for_device(stats_lib.Settings.of(**config.input))
  # Without a file: the published constants, named as such.
  config = ilsvrc.get_config()
  published = stats_lib.for_settings(stats_lib.Settings.of(**config.input))
  assert published.source == 'published ImageNet constants'
  np.testing.assert_allclose(published.channel_mean, (123.68, 116.78, 103.94), rtol=1e-6)
