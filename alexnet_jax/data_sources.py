"""Data sources: where examples come from, before any preprocessing.

Each source (config.dataset.source) gives, per split, a set of keys, a
deterministic pass order over them and `load(key)` -> encoded image + label:

  'tfds'    a tfds image-classification dataset prepared in config.dataset.data_dir,
            e.g. imagenet2012 from the two ILSVRC2012 tars (see prepare_tfds).
  'folder'  config.dataset.folder/<split>/<class>/*.{jpg,jpeg,png,bmp,gif}; the
            classes are the train split's sub-folders in sorted order ('validation'
            falls back to a folder named 'val').
  'digits'  scikit-learn's 8x8 digits in memory (the no-download default), the
            last 360 images are the eval split.

``alexnet_jax.input_pipeline`` turns these into batches (decoding,
preprocessing, corrupt-file handling, resume).
"""

import dataclasses
import functools
import os
from typing import Callable, List, NamedTuple, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
_DIGITS_EVAL = 360  # scikit-learn digits: the last 360 images are the eval split
# Salt that keeps the order stream independent of the augmentation stream
# (input_pipeline folds AUGMENT into its seeds).
ORDER, AUGMENT = 0, 1
_AUTOTUNE = tf.data.AUTOTUNE


class DatasetNotFoundError(FileNotFoundError):
  """The configured dataset is not prepared; the message says how to prepare it."""


class DatasetInfo(NamedTuple):
  num_train: int
  num_eval: int
  num_classes: int


# Sources: each split is a set of keys, a pass order over them and `load`.
# --------------------------------------------------------------------------


def fold(seed: tf.Tensor, *data) -> tf.Tensor:
  for d in data:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(d, tf.int64))
  return seed


def scalar_seed(seed: tf.Tensor) -> tf.Tensor:
  return tf.random.stateless_uniform([], seed, minval=None, maxval=None,
                                     dtype=tf.int64)


class Split:
  """One split of a source. Keys are what a dataset carries before decoding."""

  per_process_positions: bool  # True: positions count within the process

  def epoch(self, epoch, steps: int, batch: int, process_index: int,
            process_count: int, seed: int) -> tf.data.Dataset:
    """Pass `epoch`'s (position, key) for this process, steps * batch of them."""
    raise NotImplementedError

  def share(self, process_index: int, process_count: int
            ) -> Tuple[tf.data.Dataset, List[int]]:
    """This process's keys in order, and the share sizes of all processes."""
    raise NotImplementedError

  def load(self, key) -> dict:
    """{'image': encoded string or uint8 (H, W, C), 'label': int32, 'name': string}."""
    raise NotImplementedError

  def name(self, key) -> tf.Tensor:
    """The example's name without decoding it (for reports)."""
    raise NotImplementedError


class ArraySplit(Split):
  """Examples held in memory (digits) or as a list of files (folder)."""

  per_process_positions = False

  def __init__(self, images: np.ndarray, labels: np.ndarray, names: np.ndarray,
               paths: bool):
    self.size = len(labels)
    self._images = tf.constant(images)
    self._labels = tf.constant(labels, tf.int32)
    self._names = tf.constant(names)
    self._paths = paths

  def epoch(self, epoch, steps, batch, process_index, process_count, seed):
    used = steps * process_count * batch
    perm = tf.random.experimental.stateless_shuffle(
        tf.range(self.size, dtype=tf.int64),
        fold(tf.constant([seed, ORDER], tf.int64), epoch))
    index = tf.reshape(perm[:used], [steps, process_count, batch])[:, process_index]
    position = tf.reshape(tf.range(used, dtype=tf.int64),
                          [steps, process_count, batch])[:, process_index]
    return tf.data.Dataset.from_tensor_slices(
        (tf.reshape(position, [-1]), tf.reshape(index, [-1])))

  def share(self, process_index, process_count):
    shares = np.array_split(np.arange(self.size), process_count)
    return (tf.data.Dataset.from_tensor_slices(shares[process_index].astype(np.int64)),
            [len(s) for s in shares])

  def load(self, key):
    image = tf.gather(self._images, key)
    if self._paths:
      image = tf.io.read_file(image)
    return {'image': image, 'label': tf.gather(self._labels, key),
            'name': self.name(key)}

  def name(self, key):
    return tf.gather(self._names, key)


class TfdsSplit(Split):
  """A tfds split read from its record files (``SplitInfo.file_instructions``)."""

  per_process_positions = True

  def __init__(self, builder, split: str, spec):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self._tfds = tfds
    self._builder = builder
    self._split = split
    self._image_key = spec.image_key
    self._label_key = spec.label_key
    self._shuffle_buffer = spec.shuffle_buffer
    self._cache = spec.cache
    self._cached = {}
    features = builder.info.features
    self._has_file_name = 'file_name' in features
    self._decoders = {self._image_key: tfds.decode.SkipDecoding()}
    if str(builder.info.file_format) not in ('tfrecord', 'FileFormat.TFRECORD'):
      raise ValueError(f'{builder.name} is stored as {builder.info.file_format}; '
                       'this pipeline reads tfrecord (the default of `tfds build`).')
    self.size = builder.info.splits[split].num_examples

  def _subsplit(self, process_index, process_count):
    return self._tfds.even_splits(self._split, process_count)[process_index]

  def _records(self, subsplit, file_seed=None) -> tf.data.Dataset:
    """(id, serialized example) of a subsplit; files in a seeded order or in order."""
    instructions = self._builder.info.splits[subsplit].file_instructions
    files = tf.data.Dataset.from_tensor_slices((
        [os.fspath(i.filename) for i in instructions],
        [os.path.basename(os.fspath(i.filename)) for i in instructions],
        np.array([i.skip for i in instructions], np.int64),
        np.array([i.take for i in instructions], np.int64)))
    if file_seed is not None:
      files = files.shuffle(len(instructions), seed=file_seed)

    def read(path, basename, skip, take):
      records = tf.data.TFRecordDataset(path).skip(skip)
      records = records.take(take) if take >= 0 else records
      ids = tf.data.Dataset.range(skip, 2**62).map(
          lambda i: tf.strings.join([basename, tf.strings.as_string(i)], '__'))
      return tf.data.Dataset.zip((ids, records))

    return files.interleave(read, cycle_length=min(16, len(instructions)),
                            block_length=1, num_parallel_calls=_AUTOTUNE,
                            deterministic=True)

  def epoch(self, epoch, steps, batch, process_index, process_count, seed):
    subsplit = self._subsplit(process_index, process_count)
    order = fold(tf.constant([seed, ORDER], tf.int64), epoch, process_index)
    if self._cache:  # the share's serialized records, read once, kept in memory
      if subsplit not in self._cached:
        self._cached[subsplit] = self._records(subsplit).cache()
      records = self._cached[subsplit]
    else:
      records = self._records(subsplit, file_seed=scalar_seed(fold(order, 0)))
    if self._shuffle_buffer > 1:
      records = records.shuffle(self._shuffle_buffer,
                                seed=scalar_seed(fold(order, 1)))
    return records.take(steps * batch).enumerate()

  def share(self, process_index, process_count):
    sizes = [self._builder.info.splits[self._subsplit(i, process_count)].num_examples
             for i in range(process_count)]
    return self._records(self._subsplit(process_index, process_count)), sizes

  def load(self, key):
    _, serialized = key
    ex = self._builder.info.features.deserialize_example(
        serialized, decoders=self._decoders)
    return {'image': ex[self._image_key],
            'label': tf.cast(ex[self._label_key], tf.int32),
            'name': ex['file_name'] if self._has_file_name else key[0]}

  def name(self, key):
    record_id, serialized = key
    if not self._has_file_name:
      return record_id
    return tf.io.parse_single_example(serialized, {
        'file_name': tf.io.FixedLenFeature([], tf.string, default_value='')
    })['file_name']


@dataclasses.dataclass
class Source:
  num_classes: int
  split: Callable[[str], Split]  # split name -> Split
  train_split: str
  eval_split: str


# ----------------------------------------------------------------- digits


def digits_arrays(split: str):
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  d = datasets.load_digits()
  images = (d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
  labels = d.target.astype(np.int32)
  if split == 'train':
    return images[:-_DIGITS_EVAL], labels[:-_DIGITS_EVAL]
  return images[-_DIGITS_EVAL:], labels[-_DIGITS_EVAL:]


@functools.lru_cache(maxsize=None)
def _digits_source() -> Source:
  def split(name):
    images, labels = digits_arrays('train' if name == 'train' else 'eval')
    names = np.array([f'digits/{name}/{i}' for i in range(len(labels))])
    return ArraySplit(images, labels, names, paths=False)
  return Source(10, functools.lru_cache(maxsize=None)(split), 'train', 'eval')


# ----------------------------------------------------------------- folder


def _folder_dir(root: str, split: str) -> str:
  path = os.path.join(root, split)
  if not tf.io.gfile.isdir(path) and split == 'validation':
    alternative = os.path.join(root, 'val')
    if tf.io.gfile.isdir(alternative):
      return alternative
  return path


def _folder_not_found(root, split) -> DatasetNotFoundError:
  return DatasetNotFoundError(
      f'No image folder {_folder_dir(root or "<config.dataset.folder>", split)}. '
      'source="folder" expects config.dataset.folder to hold one directory per '
      'split (config.dataset.train_split, config.dataset.eval_split; "val" also '
      'serves for "validation"), each with one sub-directory per class of '
      f'{"/".join(_EXTENSIONS)} files, e.g. ROOT/train/n01440764/a.jpg, '
      'ROOT/val/n01440764/b.jpg. Class ids are the train sub-directories in '
      'sorted order.')


def _list_images(directory: str) -> List[str]:
  return sorted(os.path.join(directory, f) for f in tf.io.gfile.listdir(directory)
                if f.lower().endswith(_EXTENSIONS))


@functools.lru_cache(maxsize=None)
def _folder_source(root: str, train_split: str, eval_split: str) -> Source:
  train_dir = _folder_dir(root, train_split) if root else ''
  if not root or not tf.io.gfile.isdir(train_dir):
    raise _folder_not_found(root, train_split)
  classes = sorted(c.rstrip('/') for c in tf.io.gfile.listdir(train_dir)
                   if tf.io.gfile.isdir(os.path.join(train_dir, c)))
  if not classes:
    raise _folder_not_found(root, train_split)

  def split(name):
    directory = _folder_dir(root, name)
    if not tf.io.gfile.isdir(directory):
      raise _folder_not_found(root, name)
    paths, labels = [], []
    for label, c in enumerate(classes):
      if tf.io.gfile.isdir(os.path.join(directory, c)):
        files = _list_images(os.path.join(directory, c))
        paths += files
        labels += [label] * len(files)
    unknown = set(c.rstrip('/') for c in tf.io.gfile.listdir(directory)) - set(classes)
    if any(tf.io.gfile.isdir(os.path.join(directory, c)) for c in unknown):
      raise ValueError(f'{directory} has classes {sorted(unknown)} that '
                       f'{train_dir} does not.')
    if not paths:
      raise _folder_not_found(root, name)
    return ArraySplit(np.array(paths), np.array(labels, np.int32),
                       np.array(paths), paths=True)

  return Source(len(classes), functools.lru_cache(maxsize=None)(split),
                 train_split, eval_split)


# ------------------------------------------------------------------- tfds


def _tfds_data_dir(spec) -> str:
  return (spec.data_dir or os.environ.get('TFDS_DATA_DIR')
          or os.path.expanduser('~/tensorflow_datasets'))


def _tfds_not_found(spec, builder=None) -> DatasetNotFoundError:
  """spec: config.dataset or a _TfdsSpec."""
  name, data_dir = spec.name, _tfds_data_dir(spec)
  manual = builder is not None and getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
  if name.split(':')[0].split('/')[0] == 'imagenet2012' or manual:
    manual_dir = spec.manual_dir or os.path.join(data_dir, 'downloads', 'manual')
    files = ('ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from '
             'https://image-net.org/download-images, registration required)'
             if name.startswith('imagenet2012') else f'the files tfds asks for:\n{manual}')
    return DatasetNotFoundError(
        f'tfds dataset {name!r} is not prepared in {data_dir}. It needs a manual '
        f'download; prepare it once:\n'
        f'  1. put {files} in {manual_dir}\n'
        f'  2. run: tfds build {name} --data_dir={data_dir} --manual_dir={manual_dir}\n'
        f'     (or in Python: alexnet_jax.data_sources.prepare_tfds(config), which calls\n'
        f'     tfds.builder({name!r}, data_dir=...).download_and_prepare(download_config='
        f'tfds.download.DownloadConfig(manual_dir=...)))\n'
        f'then pass --config.dataset.data_dir={data_dir}. Preparing ImageNet takes '
        'a few hours and ~150 GB; on Python 3.11 tfds also needs importlib_resources.')
  return DatasetNotFoundError(
      f'tfds dataset {name!r} is not prepared in {data_dir}. Download and prepare '
      f'it once with: tfds build {name} --data_dir={data_dir}\n'
      f'(or in Python: tfds.builder({name!r}, data_dir={data_dir!r}).download_and_prepare()), '
      f'then pass --config.dataset.data_dir={data_dir}.')


def _tfds_builder(spec):
  """spec: config.dataset or a _TfdsSpec."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.builder(spec.name, data_dir=spec.data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetNotFoundError(f'tfds has no dataset {spec.name!r}: {e}') from e


def prepare_tfds(config) -> None:
  """Prepares config.dataset.name in config.dataset.data_dir (manual files in manual_dir)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _tfds_builder(config.dataset)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=config.dataset.manual_dir))


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
  """The config.dataset fields a tfds source depends on (hashable, for caching)."""
  name: str
  data_dir: Optional[str]
  manual_dir: Optional[str]
  image_key: str
  label_key: str
  train_split: str
  eval_split: str
  shuffle_buffer: int
  cache: bool
  download: bool = False


@functools.lru_cache(maxsize=None)
def _tfds_source(spec: _TfdsSpec) -> Source:
  builder = _tfds_builder(spec)
  if not builder.is_prepared():
    if not spec.download or getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
      raise _tfds_not_found(spec, builder)
    logging.info('Downloading and preparing tfds %s in %s (config.dataset.download=True).',
                 spec.name, _tfds_data_dir(spec))
    builder.download_and_prepare()
  split = functools.lru_cache(maxsize=None)(
      lambda name: TfdsSplit(builder, name, spec))
  return Source(builder.info.features[spec.label_key].num_classes, split,
                 spec.train_split, spec.eval_split)


def for_config(config) -> Source:
  """The source config.dataset names."""
  ds = config.dataset
  if ds.source == 'digits':
    return _digits_source()
  if ds.source == 'folder':
    return _folder_source(ds.folder, ds.train_split, ds.eval_split)
  if ds.source == 'tfds':
    return _tfds_source(_TfdsSpec(
        ds.name, ds.data_dir, ds.manual_dir, ds.image_key, ds.label_key,
        ds.train_split, ds.eval_split, ds.shuffle_buffer, ds.cache,
        bool(ds.get('download', False))))
  raise ValueError(f'config.dataset.source={ds.source!r}; expected tfds, folder or digits.')


def dataset_info(config) -> DatasetInfo:
  source = for_config(config)
  return DatasetInfo(source.split(source.train_split).size,
                     source.split(source.eval_split).size, source.num_classes)
