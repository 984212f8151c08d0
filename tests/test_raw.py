"""The raw store (prepare --format=raw, alexnet_jax.raw_store): the paper's
R x R uint8 images read at random, with the same batches as prepared images.

Tiny JPEGs made here (one corrupt) are prepared twice: raw and lossless
(PNG TFRecords, the "JPEG-lossless" shards). Raw training batches are checked
against the prepared path's own recipe (preprocessing.train_example) applied
to the PNG images in raw's order; resume, integrity and the hosts' shares too.
"""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import data_sources
from alexnet_jax import input_pipeline as ip
from alexnet_jax import prepare
from alexnet_jax import preprocessing as pp
from alexnet_jax import raw_store
from configs import digits
from tests import ilsvrc_fixtures as fx

R, S, B = 24, 19, 4  # resize_size, crop_size, batch


def _config(folder=None, prepared_dir=None):
  config = digits.get_config()
  config.dataset.source = 'auto'
  config.dataset.folder = folder and str(folder)
  config.dataset.prepared_dir = prepared_dir and str(prepared_dir)
  config.model.num_classes = 3
  config.model.input_size = S
  config.input.resize_size = R
  config.input.mean = 'none'
  config.input.random_crop, config.input.flip, config.input.pca_lighting = True, True, 0.1
  return config


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
  """(folder, raw dir, png dir): 3 classes x 6 train images (+ 1 corrupt), 2 val each."""
  root = tmp_path_factory.mktemp('raw')
  rng = np.random.default_rng(3)
  for split, n in (('train', 6), ('val', 2)):
    for c in ('cat', 'dog', 'owl'):
      os.makedirs(root / 'images' / split / c)
      for i in range(n):
        with open(root / 'images' / split / c / f'{c}_{i}.jpg', 'wb') as f:
          f.write(fx.jpeg_bytes(fx.smooth_image(rng, 30 + 3 * i, 40 - 2 * i)))
  with open(root / 'images' / 'train' / 'dog' / 'bad.jpg', 'wb') as f:
    f.write(fx.jpeg_bytes(fx.smooth_image(rng, 30, 30))[:200])
  folder = root / 'images'
  quiet = lambda _: None
  prepare.prepare(_config(folder), str(root / 'raw'), prepare.Settings.raw(shard_size=5),
                  out=quiet)
  prepare.prepare(_config(folder), str(root / 'png'), prepare.Settings(
      encoding='png', jpeg_quality=None, shard_size=5), out=quiet)
  return folder, root / 'raw', root / 'png'


def _png_images(root, split):
  """name -> PNG bytes of a prepared split."""
  manifest = data_sources.read_manifest(str(root))
  out = {}
  for shard in manifest['splits'][split]['shards']:
    for r in tf.data.TFRecordDataset(os.path.join(root, shard['file'])):
      ex = tf.io.parse_single_example(r, data_sources.PREPARED_FEATURES)
      out[ex['name'].numpy().decode()] = (ex['image'], int(ex['label']))
  return out


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_raw_store_holds_the_lossless_pixels(dirs):
  _, raw, png = dirs
  manifest = data_sources.read_manifest(str(raw))
  assert manifest['encoding'] == 'raw' and manifest['bytes_per_image'] == R * R * 3
  assert [os.path.basename(c) for c in manifest['corrupt']] == ['bad.jpg']
  split = ip.resolve(_config(prepared_dir=raw)).train
  assert isinstance(split, data_sources.RawSplit) and split.size == 18
  images = _png_images(png, 'train')
  assert sorted(images) == sorted(split.names)
  for i, name in enumerate(split.names):
    np.testing.assert_array_equal(split.store.image(i),
                                  tf.io.decode_png(images[name][0]).numpy(), err_msg=name)
    assert split.labels[i] == images[name][1]
  # The same pass summed the same pixels for the training statistics (sections 2, 4.1).
  a, b = (np.load(os.path.join(d, 'stats.npz')) for d in (raw, png))
  assert sorted(a.files) == sorted(b.files)
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_raw_batches_equal_the_prepared_recipe_on_lossless_images(dirs):
  """Same seed and step: raw's batch is what the prepared (PNG) path's recipe
  makes of the same images, draw for draw (order: raw's permutation)."""
  _, raw, png = dirs
  data = ip.resolve(_config(prepared_dir=raw))
  recipe = ip.resolve(_config(prepared_dir=png)).recipe
  images, split = _png_images(png, 'train'), data.train
  spe = 18 // B
  for step, batch in enumerate(_take(ip.train_iterator(data, batch_size=B), spe + 2)):
    e, k = divmod(step, spe)  # crosses into pass 1
    order = split.order(e, 0, 1, data.seed)[k * B:(k + 1) * B]
    rng = data_sources.fold(tf.constant([data.seed, data_sources.AUGMENT], tf.int64), e, 0)
    for i, index in enumerate(order):
      want = pp.train_example(images[split.names[index]][0],
                              data_sources.fold(rng, k * B + i), recipe)
      for key in ('image', 'offset', 'flip', 'alpha'):
        np.testing.assert_array_equal(batch[key][i], want[key].numpy(), err_msg=key)
      assert batch['label'][i] == images[split.names[index]][1]
  assert len({tuple(o) for o in batch['offset']}) > 1  # the draws vary


def test_raw_eval_equals_lossless_eval(dirs):
  """Evaluation reads raw through RawSplit.load and the shared recipe."""
  _, raw, png = dirs
  for ten_crop in (False, True):
    a, b = (list(ip.eval_iterator(ip.resolve(_config(prepared_dir=d)), batch_size=4,
                                  ten_crop=ten_crop)) for d in (raw, png))
    assert len(a) == len(b) == 2
    # The same (image, label) rows; the TFRecord path interleaves its shards.
    rows = [sorted((x['image'][i].tobytes(), int(x['label'][i])) for x in batches
                   for i in np.flatnonzero(x['mask'])) for batches in (a, b)]
    assert len(rows[0]) == 6 and rows[0] == rows[1]


def test_resume_at_step_k_equals_uninterrupted(dirs):
  data = ip.resolve(_config(prepared_dir=dirs[1]))
  full = _take(ip.train_iterator(data, batch_size=B), 7)
  for k in (2, 5):  # inside pass 0; in pass 1
    resumed = _take(ip.train_iterator(data, batch_size=B, start_step=k), 7 - k)
    for x, y in zip(full[k:], resumed):
      for key in x:
        np.testing.assert_array_equal(x[key], y[key])


def test_two_hosts_read_disjoint_shares_whose_union_is_the_split(dirs):
  data = ip.resolve(_config(prepared_dir=dirs[1]))
  split = data.train
  for e in (0, 1):
    shares = [split.order(e, p, 2, data.seed) for p in (0, 1)]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(np.concatenate(shares)) == list(range(split.size))
    assert shares[0].max() < shares[1].min()  # each its own contiguous part
  seen = set()
  for p in (0, 1):
    for batch in _take(ip.train_iterator(data, batch_size=B, process_index=p,
                                         process_count=2), 4):
      seen.add((p, batch['image'].tobytes()[:64]))
    assert len(seen) > 1
  names = [set(), set()]  # evaluation: each process its share of the stored order
  for p in (0, 1):
    keys, sizes = data.eval.share(p, 2)
    names[p] = {data.eval.names[int(k)] for k in keys}
    assert len(names[p]) == sizes[p]
  assert not names[0] & names[1] and len(names[0] | names[1]) == data.eval.size


def _copy(raw, tmp_path):
  out = tmp_path / 'copy'
  shutil.copytree(raw, out)
  return out, data_sources.read_manifest(str(out))['splits']['train']['shards']


def test_truncated_shard_is_named_and_refused(dirs, tmp_path):
  out, shards = _copy(dirs[1], tmp_path)
  path = out / shards[1]['file']
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) - 100)
  with pytest.raises(raw_store.CorruptShardError, match=f'{shards[1]["file"]} is .* truncated'):
    ip.resolve(_config(prepared_dir=out))


def test_corrupt_shard_is_named_and_refused_before_use(dirs, tmp_path):
  out, shards = _copy(dirs[1], tmp_path)
  path = out / shards[2]['file']
  with open(path, 'r+b') as f:  # same size, one pixel changed
    f.seek(os.path.getsize(path) - 10)
    byte = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([byte[0] ^ 1]))
  data = ip.resolve(_config(prepared_dir=out))  # sizes fine: opens
  with pytest.raises(raw_store.CorruptShardError, match=f'{shards[2]["file"]} fails its checksum'):
    _take(ip.train_iterator(data, batch_size=B), 1)
  with pytest.raises(raw_store.CorruptShardError, match=shards[2]['file']):
    data.train.share(0, 1)  # the generic path (evaluation, statistics) checks first


def test_raw_prepare_resumes_to_the_same_bytes(dirs, tmp_path):
  folder, raw, _ = dirs
  out, shards = _copy(raw, tmp_path)
  os.remove(out / shards[1]['file'])  # as if killed while writing it
  os.remove(out / (shards[1]['file'] + '.json'))
  os.remove(out / data_sources.MANIFEST)
  lines = []
  prepare.prepare(_config(folder), str(out), prepare.Settings.raw(shard_size=5),
                  out=lines.append)
  assert '5 shard(s) already complete' in lines[0], lines[0]
  for f in sorted(os.listdir(raw)):
    assert (out / f).read_bytes() == (raw / f).read_bytes(), f
