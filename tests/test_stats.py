"""Training-set statistics by default (issue 26): the mean image (section 2)
and the RGB PCA (section 4.1) over the whole training split.

prepare computes them in the pass that writes the shards and they equal a
float64 NumPy computation over the stored images; a killed and resumed
prepare writes the same file; a run on prepared data uses them, logged as
computed; a folder source's are computed once, cached and reused.
"""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import data_sources
from alexnet_jax import input_pipeline as ip
from alexnet_jax import prepare
from alexnet_jax import stats as stats_lib
from tests import ilsvrc_fixtures as fx
from tests.conftest import TINY, set_keys
from tests.test_prepare import _config, _records

R = 68  # resize_size: the tiny digits model's 67 x 67 crops
PNG = prepare.Settings(encoding='png', jpeg_quality=None, shard_size=3)


def _write_folder(root):
  """root/{train,val}/{a,b}/*.jpg, 7 train images of various sizes; the val
  images are far brighter (statistics that took them in would show it)."""
  rng = np.random.default_rng(3)
  for split, n in (('train', 4), ('val', 1)):
    for c in ('a', 'b'):
      os.makedirs(os.path.join(root, split, c))
      for i in range(n - (split == 'train' and c == 'b')):
        img = fx.smooth_image(rng, 44 + 7 * i, 60 - 5 * i)
        if split == 'val':
          img = np.maximum(img, 230)
        with open(os.path.join(root, split, c, f'{i}.jpg'), 'wb') as f:
          f.write(fx.jpeg_bytes(img))
  return root


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  return _write_folder(str(tmp_path_factory.mktemp('images')))


@pytest.fixture(scope='module')
def prepared(folder, tmp_path_factory):
  out = tmp_path_factory.mktemp('prepared')
  prepare.prepare(_folder_config(folder), str(out), PNG, out=lambda _: None)
  return out


def _folder_config(folder=None, prepared_dir=None):
  config = _config(folder, prepared_dir)
  config.model.num_classes = 2
  config.model.input_size = R - 1
  config.input.resize_size = R
  config.input.mean = 'image'
  config.input.pca_lighting = 0.1
  return config


def _settings(config):
  return stats_lib.Settings.of(**config.input)


def test_prepare_statistics_equal_a_float64_numpy_computation(prepared):
  """Over the stored (lossless: the resampled uint8) training images only."""
  manifest = data_sources.read_manifest(str(prepared))
  images = np.stack([tf.io.decode_png(r['image']).numpy()
                     for s in manifest['splits']['train']['shards']
                     for r in _records(prepared / s['file'])]).astype(np.float64)
  assert images.shape == (7, R, R, 3)
  pixels = images.reshape(-1, 3) / 255.0
  cov = (pixels - pixels.mean(0)).T @ (pixels - pixels.mean(0)) / len(pixels)
  eigval, eigvec = np.linalg.eigh(cov)
  eigval, eigvec = eigval[::-1], eigvec[:, ::-1]

  stats = stats_lib.load(str(prepared / stats_lib.PREPARED))
  assert stats.num_images == 7 and stats.source.startswith(
      'computed over 7 training images (split train) by prepare')
  np.testing.assert_allclose(stats.mean_image, images.mean(0), rtol=1e-6)
  np.testing.assert_allclose(stats.eigval, eigval, rtol=1e-5)
  np.testing.assert_allclose(np.abs(np.sum(stats.eigvec * eigvec, 0)), 1, atol=1e-5)


def test_a_resumed_prepare_writes_the_same_statistics(folder, prepared, tmp_path):
  """A run stopped with shard 1 unwritten and shard 2's sums missing (a shard
  is complete with its sums): the rerun adds shard 0's stored sums to those
  it computes."""
  out = tmp_path / 'out'
  prepare.prepare(_folder_config(folder), str(out), PNG, out=lambda _: None)
  for f in ('train-00001-of-00003.tfrecord', 'train-00001-of-00003.tfrecord.stats.npz',
            'train-00002-of-00003.tfrecord.stats.npz', stats_lib.PREPARED, 'manifest.json'):
    (out / f).unlink()
  lines = []
  prepare.prepare(_folder_config(folder), str(out), PNG, out=lines.append)
  assert '2 shard(s) already complete' in lines[0]
  assert ((out / stats_lib.PREPARED).read_bytes()
          == (prepared / stats_lib.PREPARED).read_bytes())


def test_a_run_on_prepared_data_logs_computed_statistics(prepared, tmp_path, caplog):
  """train.setup: the statistics prepare computed, not the published ones."""
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  config = set_keys(_folder_config(prepared_dir=prepared), {
      **TINY, 'batch_size': 4})
  used = []
  loaded = stats_lib.load
  stats_lib_load = lambda path: used.append(path) or loaded(path)
  with pytest.MonkeyPatch.context() as m, caplog.at_level(logging.INFO):
    m.setattr(stats_lib, 'load', stats_lib_load)
    m.setattr(stats_lib, 'published', lambda s: pytest.fail('published constants'))
    train.setup(config, ip.resolve(config), str(tmp_path))
  lines = [r.getMessage() for r in caplog.records if 'Input statistics' in r.getMessage()]
  assert len(lines) == 1 and 'computed over 7 training images' in lines[0], lines
  assert used == [str(prepared / stats_lib.PREPARED)]
  assert 'published' not in caplog.text.lower()


def test_a_folder_source_computes_once_then_reuses(folder, tmp_path, monkeypatch):
  config = _folder_config(folder)
  data = ip.resolve(config)
  reads = []

  def images():
    reads.append(1)
    return ip.stats_images(data)

  def dataset():
    return data_sources.Dataset(**config.dataset)

  first = stats_lib.for_dataset(_settings(config), dataset(), images, str(tmp_path))
  cache = os.path.join(folder, stats_lib.cache_name('train', _settings(config)))
  assert reads == [1] and first.num_images == 7
  assert first.source.startswith('computed over 7 training images of folder')
  assert first.source.endswith(f'saved to {cache}')
  expected = stats_lib.compute(ip.stats_images(data))
  np.testing.assert_array_equal(first.mean_image, expected.mean_image)
  mtime = os.stat(cache).st_mtime_ns

  again = stats_lib.for_dataset(_settings(config), dataset(), images, str(tmp_path))
  assert reads == [1] and os.stat(cache).st_mtime_ns == mtime  # not recomputed
  assert again.source.endswith(f'reused from {cache}') and 'computed' in again.source
  np.testing.assert_array_equal(again.mean_image, first.mean_image)
  np.testing.assert_array_equal(again.eigvec, first.eigvec)

  # Other settings: another file. A read-only data directory: the workdir.
  config.input.resize_size = R + 4
  save = stats_lib.save

  def read_only(stats, path, **extra):
    if path.startswith(folder):
      raise PermissionError(13, 'Permission denied', path)
    save(stats, path, **extra)

  monkeypatch.setattr(stats_lib, 'save', read_only)
  data = ip.resolve(config)
  other = stats_lib.for_dataset(_settings(config), dataset(), images, str(tmp_path))
  assert reads == [1, 1] and other.mean_image.shape == (R + 4, R + 4, 3)
  assert other.source.endswith(f'saved to {tmp_path / stats_lib.cache_name("train", _settings(config))}')
  assert stats_lib.for_dataset(_settings(config), dataset(), images,
                               str(tmp_path)).source.endswith('.npz')
  assert reads == [1, 1]

  # An explicit stats file overrides; the images are not read.
  config.input.stats_path = cache
  config.input.resize_size = R
  assert 'reused' not in stats_lib.for_dataset(_settings(config), dataset(),
                                                images).source
  assert reads == [1, 1]
