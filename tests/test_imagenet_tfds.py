"""ILSVRC2012 end to end: tars in the real layout -> tfds imagenet2012 -> train + eval.

The archives are written here from JPEGs made here (tests/ilsvrc_fixtures.py)
and prepared offline by the real tfds `imagenet2012` builder in a temporary
data_dir, exactly as a user prepares the real ones; then one training step and
both evaluations (centre crop and the paper's 10 crops) run on them.
"""

import collections
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from alexnet_jax import input_pipeline as ip
from alexnet_jax import prepare
from configs import ilsvrc
from tests import ilsvrc_fixtures as fx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _labels_txt(name):
  path = tfds.core.tfds_path(f'datasets/imagenet2012/{name}')
  return path.read_text().split()


def _config(root):
  config = ilsvrc.get_config('runlocal')
  config.dataset.data_dir = str(root / 'data')
  config.dataset.manual_dir = str(root / 'manual')
  config.dataset.shuffle_buffer = 8
  return config


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp('ilsvrc')
  fx.write_ilsvrc2012(str(root / 'manual'), per_class=4, num_val=6)
  config = _config(root)
  with pytest.raises(ip.DatasetNotFoundError,
                     match='alexnet_jax.prepare --config=configs/ilsvrc.py --tfds_build'):
    ip.resolve(config).info
  # The README's command, in this process: tfds' own imagenet2012 builder with
  # the tars as manual_dir (no apache_beam).
  assert prepare.run_command([
      'prepare', f'--config={os.path.join(ROOT, "configs", "ilsvrc.py")}:runlocal',
      '--tfds_build', f'--config.dataset.data_dir={root / "data"}',
      f'--config.dataset.manual_dir={root / "manual"}']) == 0
  return root


def test_dataset_info_and_batches(prepared):
  config = _config(prepared)
  info = ip.resolve(config).info
  synsets = _labels_txt('labels.txt')
  assert info == ip.DatasetInfo(12, 6, 1000) and info.class_names == tuple(synsets)
  train_ids = {synsets.index(w) for w in fx.SYNSETS}
  it = ip.train_iterator(ip.resolve(config), batch_size=4)
  stream = [next(it) for _ in range(7)]  # 3 steps per pass: crosses two passes
  for b in stream:
    assert b['image'].shape == (4, 227, 227, 3) and b['image'].dtype == np.uint8
    assert set(b['label']) <= train_ids
  # Each pass sees every training image once (12 = 3 steps x 4).
  assert collections.Counter(np.concatenate([b['label'] for b in stream[:3]]).tolist()) == {
      i: 4 for i in train_ids}
  # Resume from any step continues the same stream.
  for k in (2, 4):
    resumed = ip.train_iterator(ip.resolve(config), batch_size=4, start_step=k)
    for b in stream[k:]:
      r = next(resumed)
      for key in b:  # pixels, draws and labels
        np.testing.assert_array_equal(r[key], b[key], err_msg=key)

  # Validation labels: tfds' validation_labels.txt, one line per sorted file name.
  expected = sorted(synsets.index(w) for w in _labels_txt('validation_labels.txt')[:6])
  for process_count in (1, 2, 4):
    labels, shapes = [], set()
    for p in range(process_count):
      for b in ip.eval_iterator(ip.resolve(config), batch_size=4, ten_crop=True,
                                process_index=p, process_count=process_count):
        shapes.add(b['image'].shape)
        labels += b['label'][b['mask']].tolist()
    assert sorted(labels) == expected, process_count
    assert shapes == {(4, 256, 256, 3)}  # the device cuts the ten patches


@pytest.mark.slow
def test_train_and_evaluate_one_step(prepared, tmp_path):
  """One training step and both evaluations of a narrow AlexNet on the tfds data."""
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  config = _config(prepared)
  config.model.conv_features = (8, 16, 24, 24, 16)
  config.model.fc_features = 32
  config.num_train_steps = 1
  config.async_checkpoints = False
  train.train_and_evaluate(config, str(tmp_path / 'work'))
  with open(tmp_path / 'work' / 'final_metrics.json') as f:
    final = json.load(f)
  assert final['step'] == 1
  for key in ('train_loss', 'eval_top1_error', 'eval_multicrop_top1_error', 'eval_multicrop_top5_error'):
    assert np.isfinite(final[key]), key


def test_prepare_tfds_split_to_256(prepared, tmp_path):
  """`prepare --output_dir` on the tfds source: the tfds records' images, names and labels."""
  out = tmp_path / 'prepared'
  assert prepare.run_command([
      'prepare', f'--config={os.path.join(ROOT, "configs", "ilsvrc.py")}:runlocal',
      f'--config.dataset.data_dir={prepared / "data"}', f'--output_dir={out}',
      '--workers=1', '--shard_size=5']) == 0
  manifest = ip.data_sources.read_manifest(str(out))
  assert manifest['source']['source'] == 'tfds'
  assert {k: v['num_examples'] for k, v in manifest['splits'].items()} == {
      'train': 12, 'validation': 6}
  assert manifest['class_names'] == _labels_txt('labels.txt')
  config = _config(prepared)
  config.dataset.prepared_dir = str(out)
  info = ip.resolve(config).info
  assert info == ip.DatasetInfo(12, 6, 1000)
  split = ip.resolve(config).source.split('train')
  names = sorted(split.name(k).numpy().decode() for k in split.share(0, 1)[0])
  assert names == sorted(f'{w}_{i}.JPEG' for w in fx.SYNSETS for i in range(4))
