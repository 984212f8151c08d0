"""alexnet_jax.prepare: the paper's R x R images written once, and read back.

Real JPEG files written here (one corrupt) and scikit-learn's digits are
prepared; the stored images are checked against the on-the-fly resampling
(preprocessing.base_image) and against an independent "resize the whole image,
then crop the centre" reference; an interrupted preparation is resumed; every
process of a multi-process read gets its own examples; training and
evaluation read the prepared data.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax import data_sources
from alexnet_jax import input_pipeline as ip
from alexnet_jax import prepare
from alexnet_jax import preprocessing as pp
from configs import digits
from tests import ilsvrc_fixtures as fx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R = 40  # resize_size: small images keep the tests fast
CLASSES = ('cat', 'dog', 'owl')


def _write_folder(root):
  """root/{train,val}/<class>/*.jpg (various sizes, one greyscale) + one corrupt file."""
  rng = np.random.default_rng(7)
  for split, n in (('train', 4), ('val', 2)):
    for c in CLASSES:
      os.makedirs(os.path.join(root, split, c), exist_ok=True)
      for i in range(n):
        img = fx.smooth_image(rng, 50 + 9 * i, 70 - 6 * i)
        with open(os.path.join(root, split, c, f'{c}_{i}.jpg'), 'wb') as f:
          f.write(fx.jpeg_bytes(img, 'L' if i == 1 else 'RGB'))
  bad = os.path.join(root, 'train', 'dog', 'truncated.jpg')
  with open(bad, 'wb') as f:
    f.write(fx.jpeg_bytes(fx.smooth_image(rng, 64, 64))[:300])
  return bad


def _source(config) -> data_sources.Source:
  return data_sources.for_dataset(data_sources.Dataset(**config.dataset),
                                  config.input.resize_size, config.input.antialias)


def _info(config) -> data_sources.DatasetInfo:
  return ip.resolve(config).info


def _config(folder=None, prepared_dir=None):
  config = digits.get_config()
  config.dataset.source = 'auto'
  config.dataset.folder = folder and str(folder)
  config.dataset.prepared_dir = prepared_dir and str(prepared_dir)
  config.dataset.shuffle_buffer = 4
  config.model.num_classes = 3
  config.model.input_size = 35
  config.input.resize_size = R
  config.input.mean = 'none'
  return config


def _records(path):
  return [{k: v.numpy() for k, v in tf.io.parse_single_example(
      r, data_sources.PREPARED_FEATURES).items()} for r in tf.data.TFRecordDataset(path)]


def _prepared_images(root, split):
  """name -> (uint8 (R, R, 3) image, label, encoded bytes) of a prepared split."""
  manifest = data_sources.read_manifest(str(root))
  out = {}
  for shard in manifest['splits'][split]['shards']:
    for r in _records(os.path.join(root, shard['file'])):
      out[r['name'].decode()] = (tf.io.decode_image(r['image']).numpy(), r['label'],
                                 r['image'])
  return out


def _resize_then_crop(path):
  """Independent reference: decode all, resize the shorter side to R, central crop."""
  x = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
  h, w = x.shape[:2]
  size = [round(h * R / min(h, w)), round(w * R / min(h, w))]
  y = tf.image.resize(tf.cast(x, tf.float32), size, 'bilinear').numpy()
  top, left = (size[0] - R) // 2, (size[1] - R) // 2
  return y[top:top + R, left:left + R]


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('images')
  bad = _write_folder(str(root))
  return root, bad


@pytest.fixture(scope='module')
def lossless(folder, tmp_path_factory):
  out = tmp_path_factory.mktemp('prepared') / 'png'
  lines = []
  manifest = prepare.prepare(_config(folder[0]), str(out),
                             prepare.Settings(encoding='png', jpeg_quality=None,
                                              shard_size=5), out=lines.append)
  return out, manifest, lines


def test_lossless_images_equal_the_on_the_fly_resampling(folder, lossless):
  root, bad = folder
  out, manifest, lines = lossless
  # 13 train files in 3 even shards of <= 5 (5, 4, 4), the corrupt one (in the
  # second) left out; 6 validation images.
  assert manifest['splits']['train']['num_examples'] == 12
  assert [s['num_examples'] for s in manifest['splits']['train']['shards']] == [5, 3, 4]
  assert manifest['splits']['validation']['num_examples'] == 6
  assert manifest['corrupt'] == [bad] and manifest['splits']['train']['corrupt'] == [bad]
  assert manifest['class_names'] == list(CLASSES) and manifest['num_classes'] == 3
  assert manifest['encoding'] == 'png' and manifest['resize_size'] == R
  assert any(bad in line for line in lines) and any('ETA' in line for line in lines)
  for split, directory in (('train', 'train'), ('validation', 'val')):
    images = _prepared_images(out, split)
    assert len(images) == {'train': 12, 'validation': 6}[split]
    for name, (image, label, _) in images.items():
      assert name.startswith(os.path.join(str(root), directory))
      assert label == CLASSES.index(os.path.basename(os.path.dirname(name)))
      assert image.shape == (R, R, 3)
      expected, _ = pp.base_image(tf.io.read_file(name), R, True, False)
      np.testing.assert_array_equal(image, np.clip(np.round(expected.numpy()), 0, 255))
      # and the same image as resizing everything, then cropping (float rounding apart)
      assert np.abs(image - _resize_then_crop(name)).max() <= 0.5 + 1e-3


def test_jpeg_images_are_close_and_smaller(folder, lossless, tmp_path):
  root, _ = folder
  manifest = prepare.prepare(_config(root), str(tmp_path / 'jpeg'),
                             prepare.Settings(jpeg_quality=90, shard_size=5),
                             splits=['validation'], out=lambda _: None)
  assert manifest['encoding'] == 'jpeg' and manifest['jpeg_quality'] == 90
  assert list(manifest['splits']) == ['validation']
  pngs = _prepared_images(lossless[0], 'validation')
  jpegs = _prepared_images(tmp_path / 'jpeg', 'validation')
  for name, (image, _, data) in jpegs.items():
    assert data[:2] == b'\xff\xd8'  # a JPEG
    diff = image.astype(float) - pngs[name][0]
    psnr = 10 * np.log10(255**2 / np.mean(diff**2))
    assert psnr > 30, (name, psnr)
  assert sum(len(j[2]) for j in jpegs.values()) < sum(len(p[2]) for p in pngs.values())


def test_digits(tmp_path):
  config = digits.get_config()
  manifest = prepare.prepare(config, str(tmp_path),
                             prepare.Settings(encoding='png', jpeg_quality=None,
                                              shard_size=1000), out=lambda _: None)
  images, labels = data_sources.digits_arrays('eval')
  assert manifest['splits']['train']['num_examples'] == 1437
  assert manifest['splits']['eval']['num_examples'] == 360 == len(labels)
  assert manifest['class_names'] == [str(i) for i in range(10)]
  (shard,) = manifest['splits']['eval']['shards']
  records = _records(os.path.join(tmp_path, shard['file']))
  np.testing.assert_array_equal([r['label'] for r in records], labels)
  for i in (0, 181, 359):
    expected, _ = pp.base_image(tf.constant(images[i]), 76, True, False)
    np.testing.assert_array_equal(tf.io.decode_png(records[i]['image']).numpy(),
                                  np.clip(np.round(expected.numpy()), 0, 255))
  config.dataset.prepared_dir = str(tmp_path)
  config.dataset.source = 'prepared'
  info = _info(config)
  assert (info.num_train, info.num_eval, info.num_classes) == (1437, 360, 10)
  assert info.class_names == tuple(str(i) for i in range(10))


def test_resume_skips_complete_shards_and_never_leaves_partial_ones(folder, tmp_path):
  root, _ = folder
  out = tmp_path / 'out'
  settings = prepare.Settings(encoding='png', jpeg_quality=None, shard_size=5)
  prepare.prepare(_config(root), str(out), settings, out=lambda _: None)
  manifest_text = (out / 'manifest.json').read_text()
  shard = out / 'train-00001-of-00003.tfrecord'
  original = shard.read_bytes()
  # A run killed while writing shard 1: the final shard is not there (it is
  # renamed into place only when complete), a partial tmp file is.
  shard.unlink()
  (out / 'train-00001-of-00003.tfrecord.incomplete').write_bytes(original[:100])
  (out / 'manifest.json').unlink()  # nor the manifest (written last)
  with pytest.raises(ip.DatasetNotFoundError, match='alexnet_jax.prepare'):
    _source(_config(prepared_dir=out))
  lines = []
  prepare.prepare(_config(root), str(out), settings, out=lines.append)
  assert '4 shard(s) already complete' in lines[0]
  assert shard.read_bytes() == original
  assert (out / 'manifest.json').read_text() == manifest_text
  assert not [f for f in os.listdir(out) if f.endswith('.incomplete')]

  # Other settings on the same directory are refused before anything is written.
  before = sorted(os.listdir(out))
  with pytest.raises(prepare.PrepareError, match='settings'):
    prepare.prepare(_config(root), str(out), prepare.Settings(jpeg_quality=80),
                    out=lambda _: None)
  with pytest.raises(prepare.PrepareError, match='jpeg_quality'):
    prepare.prepare(_config(root), str(tmp_path / 'new'), prepare.Settings(jpeg_quality=0))
  with pytest.raises(ip.DatasetNotFoundError):
    prepare.prepare(_config(root), str(tmp_path / 'new'), settings, splits=['test'])
  assert sorted(os.listdir(out)) == before and not (tmp_path / 'new').exists()


def test_worker_processes_write_the_same_shards(folder, lossless, tmp_path):
  root, _ = folder
  manifest = prepare.prepare(_config(root), str(tmp_path),
                             prepare.Settings(encoding='png', jpeg_quality=None,
                                              shard_size=5), workers=2,
                             out=lambda _: None)
  assert manifest == lossless[1]
  for s in manifest['splits']['train']['shards']:  # the same records, in the same order
    mine, theirs = _records(tmp_path / s['file']), _records(lossless[0] / s['file'])
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
      assert a == b


def test_every_process_reads_its_own_examples(lossless):
  config = _config(prepared_dir=lossless[0])
  split = _source(config).split('train')
  everything = sorted(_prepared_images(lossless[0], 'train'))
  for count in (1, 2, 3, 5):
    names, sizes = [], None
    for p in range(count):
      keys, sizes = split.share(p, count)
      mine = [split.name(k).numpy().decode() for k in keys]
      assert len(mine) == sizes[p]
      names += mine
    assert sorted(names) == everything, count  # each exactly once
    assert max(sizes) - min(sizes) <= 1
    # A training pass: disjoint examples across processes.
    steps = 12 // (2 * count)
    seen = []
    for p in range(count):
      seen += [split.name(k).numpy().decode() for _, k in
               split.epoch(0, steps, 2, p, count, seed=0)]
    assert len(seen) == len(set(seen)) == steps * 2 * count


def test_training_on_prepared_jpegs_equals_the_general_recipe(folder, lossless, tmp_path,
                                                              monkeypatch):
  """Prepared JPEGs take a shorter path (no header check): same pixels and draws."""
  out = tmp_path / 'jpeg'
  prepare.prepare(_config(folder[0]), str(out), prepare.Settings(jpeg_quality=90, shard_size=5),
                  splits=['train'], out=lambda _: None)
  config = _config(prepared_dir=out)
  assert ip.resolve(config).recipe.base_jpegs
  assert not ip.resolve(_config(prepared_dir=lossless[0])).recipe.base_jpegs
  assert not ip.resolve(_config(folder=folder[0])).recipe.base_jpegs
  steps = 6  # two passes of 3 steps, and a resume inside the second
  fast = ip.train_iterator(ip.resolve(config), batch_size=4)
  fast = [next(fast) for _ in range(steps)]
  resumed = ip.train_iterator(ip.resolve(config), batch_size=4, start_step=4)
  monkeypatch.setattr(ip, '_prepared_jpegs', lambda ds: False)
  assert not ip.resolve(config).recipe.base_jpegs
  general = ip.train_iterator(ip.resolve(config), batch_size=4)
  for k, (a, b) in enumerate(zip(fast, [next(general) for _ in range(steps)])):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
    if k >= 4:
      r = next(resumed)
      for key in a:
        np.testing.assert_array_equal(r[key], a[key])
  # The draws are those of seed fold([seed, AUGMENT], pass, process, position).
  recipe = ip.resolve(config).recipe
  for k in range(steps):
    e, step = divmod(k, 3)
    for i in range(4):
      rng = data_sources.fold(tf.constant([config.seed, data_sources.AUGMENT], tf.int64),
                              e, 0, step * 4 + i)
      want = pp.train_example(tf.io.encode_jpeg(tf.zeros([R, R, 3], tf.uint8)), rng, recipe)
      np.testing.assert_array_equal(fast[k]['offset'][i], want['offset'].numpy())
      np.testing.assert_array_equal(fast[k]['flip'][i], want['flip'].numpy())
      np.testing.assert_array_equal(fast[k]['alpha'][i], want['alpha'].numpy())


def test_train_and_eval_on_prepared_data(folder, lossless):
  root, _ = folder
  prepared = _config(prepared_dir=lossless[0])
  assert data_sources.source_name(data_sources.Dataset(**prepared.dataset)) == 'prepared'
  info = _info(prepared)
  assert (info.num_train, info.num_eval, info.class_names) == (12, 6, CLASSES)
  it = ip.train_iterator(ip.resolve(prepared), batch_size=4)
  stream = [next(it) for _ in range(4)]
  for b in stream:
    assert b['image'].shape == (4, 35, 35, 3) and set(b['label']) <= {0, 1, 2}
  resumed = ip.train_iterator(ip.resolve(prepared), batch_size=4, start_step=2)
  for b in stream[2:]:
    np.testing.assert_array_equal(next(resumed)['image'], b['image'])
  # Evaluation crops from prepared (lossless) images equal the on-the-fly ones
  # up to the uint8 rounding of the stored image.
  on_the_fly = _config(folder=root)
  for ten_crop in (False, True):
    a = list(ip.eval_iterator(ip.resolve(prepared), batch_size=8, ten_crop=ten_crop))
    b = list(ip.eval_iterator(ip.resolve(on_the_fly), batch_size=8, ten_crop=ten_crop))
    assert a[0]['mask'].sum() == b[0]['mask'].sum() == 6
    # (shards are interleaved: the same images in another order)
    theirs = list(zip(b[0]['image'][b[0]['mask']], b[0]['label'][b[0]['mask']]))
    # Both are uint8 now: the stored image was rounded once, the on-the-fly
    # crop is rounded from the same resampled values (differ by <= 1 level).
    for image, label in zip(a[0]['image'][a[0]['mask']], a[0]['label'][a[0]['mask']]):
      assert image.dtype == np.uint8
      diff = min(np.abs(image.astype(np.int16) - x.astype(np.int16)).max()
                 for x, y in theirs if y == label)
      assert diff <= 1


def test_source_selection(folder, tmp_path):
  root, _ = folder
  # folder alone selects it
  assert data_sources.source_name(data_sources.Dataset(**_config(folder=root).dataset)) == 'folder'
  assert data_sources.source_name(data_sources.Dataset(**_config().dataset)) == 'tfds'
  config = digits.get_config()
  config.dataset.folder = str(root)  # source='digits' would ignore it: refused
  with pytest.raises(ValueError, match='source=folder'):
    _source(config)
  with pytest.raises(ip.DatasetNotFoundError, match='alexnet_jax.prepare'):
    _source(_config(prepared_dir=tmp_path / 'none'))
  assert _info(_config(folder=root)).class_names == CLASSES


def test_command_line_errors_write_nothing(tmp_path, capsys):
  out = tmp_path / 'out'
  digits_config = os.path.join(ROOT, 'configs', 'digits.py')
  for args, error in (
      (['--lossless', '--jpeg_quality=80'], 'ERROR: --lossless stores PNG'),
      (['--jpeg_quality=101'], 'ERROR: --jpeg_quality=101: expected 1..100'),
      (['--splits=train,nope'], 'ERROR: --splits'),
      (['--tfds_build'], "ERROR: --tfds_build prepares a tfds dataset; the config's source is 'digits'")):
    assert prepare.run_command(['prepare', f'--config={digits_config}',
                                f'--output_dir={out}', *args]) == 1
    assert error in capsys.readouterr().err, args
    assert not out.exists()


_KILLED_MID_SHARD = '''
import os, signal, sys
import tensorflow as tf
from alexnet_jax import prepare
written = [0]
class Writer(tf.io.TFRecordWriter):
  def write(self, record):
    written[0] += 1
    if written[0] == 8:  # kill -9 in the middle of the second shard
      self.flush()
      os.kill(os.getpid(), signal.SIGKILL)
    super().write(record)
tf.io.TFRecordWriter = Writer
sys.exit(prepare.run_command(sys.argv))
'''


def test_killed_mid_shard_then_resumed(folder, lossless, tmp_path):
  root, _ = folder
  out = tmp_path / 'out'
  args = ['--config=configs/digits.py', '--config.dataset.source=auto',
          f'--config.dataset.folder={root}', f'--config.input.resize_size={R}',
          '--config.model.num_classes=3', '--lossless', '--shard_size=5', '--workers=1',
          f'--output_dir={out}']
  result = subprocess.run([sys.executable, '-c', _KILLED_MID_SHARD, *args], cwd=ROOT,
                          capture_output=True, text=True,
                          env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'})
  assert result.returncode == -9, result.stderr[-2000:]
  files = sorted(os.listdir(out))
  assert 'manifest.json' not in files
  assert 'train-00000-of-00003.tfrecord.json' in files  # complete
  assert 'train-00001-of-00003.tfrecord' not in files  # never under its final name
  assert 'train-00001-of-00003.tfrecord.incomplete' in files
  with pytest.raises(ip.DatasetNotFoundError, match='not finished'):
    _source(_config(prepared_dir=out))
  assert prepare.run_command(['prepare', *args]) == 0  # the same command again
  assert json.loads((out / 'manifest.json').read_text()) == lossless[1]
  for s in lossless[1]['splits']['train']['shards']:
    assert _records(out / s['file']) == _records(lossless[0] / s['file'])
  assert not [f for f in os.listdir(out) if f.endswith('.incomplete')]


def test_disk_full_is_reported_and_resumable(folder, lossless, tmp_path, monkeypatch,
                                            capsys):
  root, _ = folder
  out = tmp_path / 'out'
  args = ['prepare', f'--config={os.path.join(ROOT, "configs", "digits.py")}',
          '--config.dataset.source=auto', f'--config.dataset.folder={root}',
          f'--config.input.resize_size={R}', '--lossless', '--shard_size=5',
          '--workers=1', f'--output_dir={out}']
  written = []

  class FullDisk(tf.io.TFRecordWriter):
    def write(self, record):
      written.append(1)
      if len(written) == 7:  # ENOSPC in the second shard
        raise OSError(28, 'No space left on device')
      super().write(record)

  monkeypatch.setattr(tf.io, 'TFRecordWriter', FullDisk)
  assert prepare.run_command(args) == 1
  err = capsys.readouterr().err
  assert 'No space left on device' in err and 'rerun the same command' in err
  assert 'Traceback' not in err and not (out / 'manifest.json').exists()
  monkeypatch.undo()
  assert prepare.run_command(args) == 0
  assert json.loads((out / 'manifest.json').read_text()) == lossless[1]
