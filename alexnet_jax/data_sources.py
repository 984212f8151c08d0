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
  'prepared' config.dataset.prepared_dir written by ``python -m alexnet_jax.prepare``
            from any of the above: the paper's 256x256 images (section 2), once,
            as sharded TFRecords of JPEG/PNG (read like a tfds split) or, with
            --format=raw, as uint8 .npy shards read at random (``RawSplit``);
            the manifest says which.
  'auto'    (the default) 'prepared' if config.dataset.prepared_dir is set,
            else 'folder' if config.dataset.folder is set, else 'tfds'.

``alexnet_jax.input_pipeline`` turns these into batches (decoding,
preprocessing, corrupt-file handling, resume).
"""

import dataclasses
import functools
import os
import json
from typing import Callable, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
_DIGITS_EVAL = 360  # scikit-learn digits: the last 360 images are the eval split
# Salt that keeps the order stream independent of the augmentation stream
# (input_pipeline folds AUGMENT into its seeds).
ORDER, AUGMENT = 0, 1
_AUTOTUNE = tf.data.AUTOTUNE


class FolderClassError(ValueError):
  """A folder dataset's class (a sub-folder of the train split) is missing or
  holds no images in a split; names the folders (issue 18)."""


class DatasetNotFoundError(FileNotFoundError):
  """The configured dataset is not prepared; the message says how to prepare it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_train: int
  num_eval: int
  num_classes: int
  # Class id -> name (digits '0'..'9', folder sub-directories, tfds label names);
  # not part of equality.
  class_names: Tuple[str, ...] = dataclasses.field(default=(), compare=False)


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


class RecordSplit(Split):
  """A split stored as record files, each process reading its even share.

  Subclasses say which (file, skip, take) ranges make up process p's share
  (``_instructions``) and how to parse a record (``load``, ``name``). Training
  reads the share's files in a seeded order, interleaved deterministically,
  through a seeded shuffle buffer; keys are (record id, serialized record).
  """

  per_process_positions = True

  def __init__(self, size: int, shuffle_buffer: int, cache: bool):
    self.size = size
    self._shuffle_buffer = shuffle_buffer
    self._cache = cache
    self._cached = {}

  def _instructions(self, process_index: int, process_count: int
                    ) -> List[Tuple[str, int, int]]:
    """(path, skip, take) of process_index's share in stored order (take -1: to the end)."""
    raise NotImplementedError

  def _share_size(self, process_index: int, process_count: int) -> int:
    raise NotImplementedError

  def _records(self, instructions, file_seed=None) -> tf.data.Dataset:
    """(id, serialized example) of (path, skip, take) ranges; files in a seeded order or in order."""
    files = tf.data.Dataset.from_tensor_slices((
        [p for p, _, _ in instructions],
        [os.path.basename(p) for p, _, _ in instructions],
        np.array([skip for _, skip, _ in instructions], np.int64),
        np.array([take for _, _, take in instructions], np.int64)))
    if not instructions:  # an empty share (more processes than examples)
      return tf.data.Dataset.from_tensor_slices(
          (tf.constant([], tf.string), tf.constant([], tf.string)))
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
    instructions = self._instructions(process_index, process_count)
    order = fold(tf.constant([seed, ORDER], tf.int64), epoch, process_index)
    if self._cache:  # the share's serialized records, read once, kept in memory
      share = (process_index, process_count)
      if share not in self._cached:
        self._cached[share] = self._records(instructions).cache()
      records = self._cached[share]
    else:
      records = self._records(instructions, file_seed=scalar_seed(fold(order, 0)))
    if self._shuffle_buffer > 1:
      records = records.shuffle(self._shuffle_buffer,
                                seed=scalar_seed(fold(order, 1)))
    return records.take(steps * batch).enumerate()

  def share(self, process_index, process_count):
    sizes = [self._share_size(i, process_count) for i in range(process_count)]
    return self._records(self._instructions(process_index, process_count)), sizes


class TfdsSplit(RecordSplit):
  """A tfds split read from its record files (``SplitInfo.file_instructions``)."""

  def __init__(self, builder, split: str, spec):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    super().__init__(builder.info.splits[split].num_examples, spec.shuffle_buffer,
                     spec.cache)
    self._tfds = tfds
    self._builder = builder
    self._split = split
    self._image_key = spec.image_key
    self._label_key = spec.label_key
    features = builder.info.features
    self._has_file_name = 'file_name' in features
    self._decoders = {self._image_key: tfds.decode.SkipDecoding()}
    if str(builder.info.file_format) not in ('tfrecord', 'FileFormat.TFRECORD'):
      raise ValueError(f'{builder.name} is stored as {builder.info.file_format}; '
                       'this pipeline reads tfrecord (the default of `tfds build`).')

  def _subsplit(self, process_index, process_count):
    return self._tfds.even_splits(self._split, process_count)[process_index]

  def _instructions(self, process_index, process_count):
    return [(os.fspath(i.filename), i.skip, i.take) for i in self._builder.info.splits[
        self._subsplit(process_index, process_count)].file_instructions]

  def _share_size(self, process_index, process_count):
    return self._builder.info.splits[
        self._subsplit(process_index, process_count)].num_examples

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


# Features of a prepared record (alexnet_jax.prepare writes them).
PREPARED_FEATURES = {
    'image': tf.io.FixedLenFeature([], tf.string),  # JPEG or PNG, R x R x 3
    'label': tf.io.FixedLenFeature([], tf.int64),
    'name': tf.io.FixedLenFeature([], tf.string),   # the original file / record
}


def even_share(size: int, process_index: int, process_count: int) -> Tuple[int, int]:
  """[start, end) of process_index's share of `size` examples (sizes differ by <= 1)."""
  return (size * process_index // process_count,
          size * (process_index + 1) // process_count)


class PreparedSplit(RecordSplit):
  """A split written by ``alexnet_jax.prepare``: shards of tf.train.Example."""

  def __init__(self, files: Sequence[Tuple[str, int]], shuffle_buffer: int,
               cache: bool):
    """files: (path, number of examples) of each shard, in stored order."""
    self._files = list(files)
    super().__init__(sum(n for _, n in self._files), shuffle_buffer, cache)

  def _instructions(self, process_index, process_count):
    start, end = even_share(self.size, process_index, process_count)
    out, first = [], 0
    for path, n in self._files:  # the shards' parts inside [start, end)
      skip, stop = max(start - first, 0), min(end - first, n)
      if stop > skip:
        out.append((path, skip, stop - skip))
      first += n
    return out

  def _share_size(self, process_index, process_count):
    start, end = even_share(self.size, process_index, process_count)
    return end - start

  def load(self, key):
    ex = tf.io.parse_single_example(key[1], PREPARED_FEATURES)
    return {'image': ex['image'], 'label': tf.cast(ex['label'], tf.int32),
            'name': ex['name']}

  def name(self, key):
    return tf.io.parse_single_example(key[1], {'name': PREPARED_FEATURES['name']})['name']


class RawSplit(Split):
  """A split written by ``alexnet_jax.prepare --format=raw``: uint8 .npy shards
  (``alexnet_jax.raw_store``), read at random.

  Process p of P reads only its even share [start, end) of the split (stored
  order); pass e's order is a stateless permutation of that share from
  (seed, e, p), so a resume at any step starts right there. Keys are global
  indices. ``input_pipeline`` reads training batches through ``store``
  directly (a background gather); ``load`` serves every other path (evaluation,
  statistics, other crops) one image at a time.
  """

  per_process_positions = True

  def __init__(self, store, labels: np.ndarray, names: np.ndarray):
    self.store = store
    self.size = store.size
    self.labels = labels
    self.names = names
    self._labels = tf.constant(labels, tf.int32)
    self._names = tf.constant(names.astype(str))
    r = store.resize_size
    self._image_shape = [r, r, 3]

  def _permutation(self, epoch, process_index, process_count, seed) -> tf.Tensor:
    start, end = even_share(self.size, process_index, process_count)
    return tf.random.experimental.stateless_shuffle(
        tf.range(start, end, dtype=tf.int64),
        fold(tf.constant([seed, ORDER], tf.int64), epoch, process_index))

  def order(self, epoch: int, process_index: int, process_count: int,
            seed: int) -> np.ndarray:
    """Pass `epoch`'s global indices of this process's share, in training order."""
    return self._permutation(epoch, process_index, process_count, seed).numpy()

  def _ready(self, process_index, process_count) -> None:
    """Verifies the share's shards (once) before anything reads them."""
    start, end = even_share(self.size, process_index, process_count)
    self.store.ready(self.store.locate(np.arange(start, end))[0])

  def epoch(self, epoch, steps, batch, process_index, process_count, seed):
    self._ready(process_index, process_count)
    perm = self._permutation(epoch, process_index, process_count, seed)
    return tf.data.Dataset.from_tensor_slices(perm[:steps * batch]).enumerate()

  def share(self, process_index, process_count):
    self._ready(process_index, process_count)
    start, end = even_share(self.size, process_index, process_count)
    return (tf.data.Dataset.range(start, end),
            [b - a for a, b in (even_share(self.size, i, process_count)
                                for i in range(process_count))])

  def load(self, key):
    image = tf.numpy_function(self.store.image, [key], tf.uint8, stateful=False)
    image.set_shape(self._image_shape)
    return {'image': image, 'label': tf.gather(self._labels, key), 'name': self.name(key)}

  def name(self, key):
    return tf.gather(self._names, key)


@dataclasses.dataclass
class Source:
  num_classes: int
  split: Callable[[str], Split]  # split name -> Split
  train_split: str
  eval_split: str
  class_names: Tuple[str, ...] = ()  # class id -> name


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
    if name not in ('train', 'eval'):
      raise KeyError(f"digits has the splits 'train' and 'eval', not {name!r}")
    images, labels = digits_arrays(name)
    names = np.array([f'digits/{name}/{i}' for i in range(len(labels))])
    return ArraySplit(images, labels, names, paths=False)
  return Source(10, functools.lru_cache(maxsize=None)(split), 'train', 'eval',
                tuple(str(i) for i in range(10)))


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
    paths, labels, problems = [], [], []
    for label, c in enumerate(classes):
      folder = os.path.join(directory, c)
      files = _list_images(folder) if tf.io.gfile.isdir(folder) else []
      if not files:
        problems.append(f'{folder} ' + ('holds no image files' if tf.io.gfile.isdir(folder)
                                         else f'is missing (class {c!r} of {train_dir})'))
      paths += files
      labels += [label] * len(files)
    if problems:  # Such a class would be taken silently, with no examples.
      more = f' (and {len(problems) - 5} more)' if len(problems) > 5 else ''
      raise FolderClassError(
          f'{"; ".join(problems[:5])}{more}. Every class folder of the train split needs '
          'images in each split: add them, or remove the class folder from every split.')
    unknown = set(c.rstrip('/') for c in tf.io.gfile.listdir(directory)) - set(classes)
    if any(tf.io.gfile.isdir(os.path.join(directory, c)) for c in unknown):
      raise ValueError(f'{directory} has classes {sorted(unknown)} that '
                       f'{train_dir} does not.')
    if not paths:
      raise _folder_not_found(root, name)
    return ArraySplit(np.array(paths), np.array(labels, np.int32),
                       np.array(paths), paths=True)

  return Source(len(classes), functools.lru_cache(maxsize=None)(split),
                train_split, eval_split, tuple(classes))


# ------------------------------------------------------------------- tfds


def tfds_data_dir(spec) -> str:
  return (spec.data_dir or os.environ.get('TFDS_DATA_DIR')
          or os.path.expanduser('~/tensorflow_datasets'))


def _manual_dir(spec) -> str:
  return spec.manual_dir or os.path.join(tfds_data_dir(spec), 'downloads', 'manual')


# The config that reads each tfds dataset (configs/*.py), and its dataset.name.
_CONFIG_OF = {'imagenet2012': ('configs/ilsvrc.py', 'imagenet2012'),
              'imagenette': ('configs/imagenette.py', 'imagenette/full-size-v2'),
              'cifar10': ('configs/cifar10.py', 'cifar10')}


def tfds_build_command(spec) -> str:
  """The project command that prepares tfds dataset spec.name (no apache_beam
  needed), with the config that reads it (configs/imagenette.py for imagenette)."""
  name = spec.name.split(':')[0]
  config, config_name = _CONFIG_OF.get(name.split('/')[0], ('configs/ilsvrc.py', 'imagenet2012'))
  command = f'python -m alexnet_jax.prepare --config={config} --tfds_build'
  if spec.name != config_name:
    command += f' --config.dataset.name={spec.name}'
  command += f' --config.dataset.data_dir={tfds_data_dir(spec)}'
  if name == 'imagenet2012' or spec.manual_dir:
    command += f' --config.dataset.manual_dir={_manual_dir(spec)}'
  return command


def _tfds_not_found(spec, builder=None) -> DatasetNotFoundError:
  """spec: a Dataset or a _TfdsSpec."""
  name, data_dir = spec.name, tfds_data_dir(spec)
  manual = builder is not None and getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
  if name.split(':')[0].split('/')[0] == 'imagenet2012' or manual:
    files = ('ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from '
             'https://image-net.org/download-images, registration required)'
             if name.startswith('imagenet2012') else f'the files tfds asks for:\n{manual}')
    return DatasetNotFoundError(
        f'tfds dataset {name!r} is not prepared in {data_dir}. It needs a manual '
        f'download; prepare it once:\n'
        f'  1. put {files} in {_manual_dir(spec)}\n'
        f'  2. run: {tfds_build_command(spec)}\n'
        f'     (tfds\' download_and_prepare with the tars as manual_dir; no apache_beam)\n'
        f'then pass --config.dataset.data_dir={data_dir}. Preparing ImageNet takes '
        'a few hours and ~150 GB; on Python 3.11 tfds also needs importlib_resources. '
        'Then optionally `python -m alexnet_jax.prepare ... --output_dir=DIR` writes '
        'the 256x256 images once (docs/data.md, "Prepared data").')
  return DatasetNotFoundError(
      f'tfds dataset {name!r} is not prepared in {data_dir}. Download and prepare '
      f'it once with: {tfds_build_command(spec)}\n'
      f'(or set --config.dataset.download=True), then pass '
      f'--config.dataset.data_dir={data_dir}.')


def _tfds_builder(spec):
  """spec: a Dataset or a _TfdsSpec."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.builder(spec.name, data_dir=spec.data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetNotFoundError(f'tfds has no dataset {spec.name!r}: {e}') from e


class _UrlRecorder:
  """A stand-in for tfds' DownloadManager that records the URLs a builder asks
  for, then stops it (`_Recorded`)."""

  class Recorded(Exception):
    pass

  def __init__(self):
    self.urls = []

  def _record(self, tree):
    if isinstance(tree, dict):
      tree = list(tree.values())
    for url in tree if isinstance(tree, (list, tuple)) else [tree]:
      self.urls.append(str(getattr(url, 'url', url)))
    raise self.Recorded()

  download = download_and_extract = _record


def needed_urls(builder) -> list:
  """The URLs of the files builder's config downloads: those its split
  generators ask the download manager for (imagenette/full-size-v2:
  imagenette2.tgz only, not the other five of its checksums file); all its
  registered URLs if they cannot be told."""
  recorder = _UrlRecorder()
  try:
    builder._split_generators(recorder)  # pylint: disable=protected-access
  except _UrlRecorder.Recorded:
    pass
  except Exception:  # pylint: disable=broad-except
    recorder.urls = []
  known = builder.url_infos or {}
  return [u for u in recorder.urls if u in known] or sorted(known)


def check_download_reachable(builder, spec, timeout: float = 5.0) -> None:
  """Fails in seconds, with the manual route, if tfds could not fetch spec.name.

  Probes the hosts of the files the dataset needs (`needed_urls`) with one TCP
  connection each, instead of letting tfds retry for minutes offline. Files
  already in the manual_dir are used by tfds without a download.
  """
  import socket  # pylint: disable=g-import-not-at-top
  import urllib.parse  # pylint: disable=g-import-not-at-top
  infos = builder.url_infos or {}
  urls = needed_urls(builder)
  files = {u: (infos[u].filename if u in infos else None) or os.path.basename(u) for u in urls}
  manual_dir = _manual_dir(spec)
  if urls and all(tf.io.gfile.exists(os.path.join(manual_dir, f)) for f in files.values()):
    return
  for host, port in sorted({(p.hostname, p.port or (80 if p.scheme == 'http' else 443))
                            for p in map(urllib.parse.urlparse, urls)}):
    try:
      socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
      size = lambda u: f' ({infos[u].size / 1e9:.2g} GB)' if u in infos and infos[u].size else ''
      fetch = (f'the one file it needs, {urls[0]}{size(urls[0])},' if len(urls) == 1 else
               'the files it needs,\n' + ''.join(f'       {u}{size(u)}\n' for u in urls) + '    ')
      raise DatasetNotFoundError(
          f'Could not download tfds dataset {spec.name!r}: {host}:{port} is not '
          f'reachable ({type(e).__name__}: {e}). Prepare it by hand, either:\n'
          f'  1. fetch {fetch}\n'
          f'     into {manual_dir} (config.dataset.manual_dir) and rerun, or\n'
          f'  2. on a machine with network run: {tfds_build_command(spec)}\n'
          f'     then copy {tfds_data_dir(spec)} here and pass '
          f'--config.dataset.data_dir=<that copy>.') from None


def prepare_tfds(ds: 'Dataset') -> None:
  """Prepares tfds ds.name in ds.data_dir (manual files in ds.manual_dir).

  ``python -m alexnet_jax.prepare --tfds_build`` runs this: tfds' builder's
  download_and_prepare, which needs no apache_beam (``tfds build`` does).
  """
  _download_and_prepare(ds)


def _download_and_prepare(spec) -> None:
  """spec: a Dataset or a _TfdsSpec."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _tfds_builder(spec)
  if builder.is_prepared():
    logging.info('tfds %s is already prepared in %s.', spec.name, builder.data_dir)
    return
  if not getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
    check_download_reachable(builder, spec)
  else:  # a manual download: the files must be there (imagenet2012: the two tars)
    manual_dir = _manual_dir(spec)
    needed = (('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
              if spec.name.startswith('imagenet2012') else ())
    if (not tf.io.gfile.isdir(manual_dir) or not tf.io.gfile.listdir(manual_dir)
        or not all(tf.io.gfile.exists(os.path.join(manual_dir, f)) for f in needed)):
      raise _tfds_not_found(spec, builder)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=spec.manual_dir))


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
                 spec.name, tfds_data_dir(spec))
    _download_and_prepare(spec)
  split = functools.lru_cache(maxsize=None)(
      lambda name: TfdsSplit(builder, name, spec))
  label = builder.info.features[spec.label_key]
  return Source(label.num_classes, split, spec.train_split, spec.eval_split,
                tuple(label.names))


# --------------------------------------------------------------- prepared

MANIFEST = 'manifest.json'


@functools.lru_cache(maxsize=None)
def _prepared_source(root: str, train_split: str, eval_split: str,
                     shuffle_buffer: int, cache: bool) -> Source:
  path = os.path.join(root, MANIFEST)
  command = ('python -m alexnet_jax.prepare --config=<the config of the original '
             f'data> --output_dir={root}')
  fix = f'Write it with `{command}` (a rerun finishes an interrupted one).' 
  if not tf.io.gfile.exists(path):
    raise DatasetNotFoundError(f'No prepared dataset in {root} ({MANIFEST} is '
                               f'missing: never prepared, or not finished). {fix}')
  with tf.io.gfile.GFile(path) as f:
    manifest = json.load(f)
  splits = manifest['splits']

  def split(name):
    if name not in splits:
      raise DatasetNotFoundError(
          f'{root} has no split {name!r} (it has {", ".join(sorted(splits))}). '
          f'Add it with `{command} --splits={",".join(sorted(splits))},{name}`.')
    files = [(os.path.join(root, s['file']), s['num_examples'])
             for s in splits[name]['shards']]
    missing = [p for p, _ in files if not tf.io.gfile.exists(p)]
    if missing:
      raise DatasetNotFoundError(f'{len(missing)} shard(s) listed in {path} are '
                                 f'missing, e.g. {missing[0]}. {fix}')
    if manifest.get('encoding') == 'raw':
      return _raw_split(root, manifest, splits[name]['shards'])
    return PreparedSplit(files, shuffle_buffer, cache)

  def pick(name, role):  # the config's split name, else the one prepared as that role
    return name if name in splits else manifest[role]

  return Source(manifest['num_classes'], functools.lru_cache(maxsize=None)(split),
                pick(train_split, 'train_split'), pick(eval_split, 'eval_split'),
                tuple(manifest['class_names']))


def _raw_split(root: str, manifest: dict, shards: Sequence[dict]) -> RawSplit:
  """A raw split (``prepare --format=raw``); sizes and headers checked here."""
  from alexnet_jax import raw_store  # pylint: disable=g-import-not-at-top
  paths = [os.path.join(root, s['file']) for s in shards]
  store = raw_store.Store([(p, s['num_examples'], s['bytes'], s['crc32'])
                           for p, s in zip(paths, shards)], manifest['resize_size'])
  return RawSplit(store, *raw_store.read_sidecars(paths))


def read_manifest(root: str) -> dict:
  with tf.io.gfile.GFile(os.path.join(root, MANIFEST)) as f:
    return json.load(f)


# ------------------------------------------------------------------ config

SOURCES = ('auto', 'tfds', 'folder', 'digits', 'prepared')


@dataclasses.dataclass(frozen=True)
class Dataset:
  """config.dataset, field for field: `Dataset(**config.dataset)`."""
  source: str                  # SOURCES
  name: str                    # tfds builder name
  data_dir: Optional[str]      # tfds data_dir
  manual_dir: Optional[str]    # tfds manual files (the ILSVRC tars)
  folder: Optional[str]        # source='folder': root/{train,val}/CLASS/*.jpg
  prepared_dir: Optional[str]  # source='prepared': `python -m alexnet_jax.prepare`'s output
  download: bool               # tfds: download if missing
  train_split: str
  eval_split: str
  image_key: str
  label_key: str
  shuffle_buffer: int
  cache: bool
  prefetch: int                # batches prefetched to device (the training loop's)
  threads: int                 # tf.data threads; 0 = one per CPU core


def source_name(ds: Dataset) -> str:
  """ds.source with 'auto' resolved (raises on an ambiguous config)."""
  source, folder, prepared = ds.source, ds.folder, ds.prepared_dir
  if source not in SOURCES:
    raise ValueError(f'config.dataset.source={source!r}; expected one of '
                     f'{", ".join(SOURCES)}.')
  if source == 'auto':
    return 'prepared' if prepared else 'folder' if folder else 'tfds'
  if folder and source in ('tfds', 'digits'):
    raise ValueError(
        f'config.dataset.folder={folder!r} is set but config.dataset.source='
        f'{source!r} would ignore it. To train on the folder pass '
        '--config.dataset.source=folder (or auto); otherwise unset dataset.folder.')
  if prepared and source != 'prepared':
    raise ValueError(
        f'config.dataset.prepared_dir={prepared!r} is set but config.dataset.source='
        f'{source!r} would ignore it. To read it pass --config.dataset.source='
        'prepared (or auto); otherwise unset dataset.prepared_dir.')
  return source


def describe(ds: Dataset) -> str:
  """The data `ds` reads, in words for logs and files: 'tfds imagenet2012',
  'folder /data/pets', 'prepared /data/256 (from folder /data/pets)', 'digits'."""
  name = source_name(ds)
  if name == 'tfds':
    return f'tfds {ds.name}'
  if name == 'folder':
    return f'folder {os.path.abspath(ds.folder)}'
  if name == 'prepared':
    try:
      origin = read_manifest(ds.prepared_dir)['source']
    except (OSError, KeyError, ValueError, tf.errors.OpError):
      return f'prepared {ds.prepared_dir}'
    what = ' '.join(str(origin.get(k)) for k in ('source', 'name', 'folder') if origin.get(k))
    return f'prepared {ds.prepared_dir} (from {what})'
  return name


def for_dataset(ds: Dataset, resize_size: int, antialias: bool) -> Source:
  """The source `ds` names. resize_size, antialias: config.input's, which a
  prepared source's images must have been resampled with (section 2's R x R)."""
  source = source_name(ds)
  if source == 'digits':
    return _digits_source()
  if source == 'folder':
    return _folder_source(ds.folder, ds.train_split, ds.eval_split)
  if source == 'prepared':
    if not ds.prepared_dir:
      raise DatasetNotFoundError(
          'config.dataset.source="prepared" needs config.dataset.prepared_dir, the '
          'output_dir of `python -m alexnet_jax.prepare --config=... --output_dir=DIR`.')
    src = _prepared_source(ds.prepared_dir, ds.train_split, ds.eval_split,
                           ds.shuffle_buffer, ds.cache)
    _check_prepared_matches(ds.prepared_dir, resize_size, antialias)
    return src
  return _tfds_source(_TfdsSpec(
      ds.name, ds.data_dir, ds.manual_dir, ds.image_key, ds.label_key,
      ds.train_split, ds.eval_split, ds.shuffle_buffer, ds.cache,
      bool(ds.download)))


def _check_prepared_matches(prepared_dir: str, resize_size: int, antialias: bool) -> None:
  """The prepared images must be the R x R images the recipe starts from."""
  manifest = read_manifest(prepared_dir)
  if manifest['resize_size'] != resize_size:
    raise ValueError(
        f'{prepared_dir} holds {manifest["resize_size"]}x'
        f'{manifest["resize_size"]} images but config.input.resize_size='
        f'{resize_size}; prepare again with this resize_size or set it '
        f'to {manifest["resize_size"]}.')
  if manifest['antialias'] != bool(antialias):
    logging.log_first_n(
        logging.WARNING, '%s was resampled with antialias=%s, config.input.antialias=%s.',
        1, prepared_dir, manifest['antialias'], antialias)


def info_of(source: Source) -> DatasetInfo:
  """Sizes and classes of a resolved source."""
  return DatasetInfo(source.split(source.train_split).size,
                     source.split(source.eval_split).size, source.num_classes,
                     source.class_names)
