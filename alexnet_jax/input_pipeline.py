"""Input pipeline: tfds, a folder of images or scikit-learn digits -> tf.data -> NumPy.

Section 4.1 preprocessing and augmentation and section 6 testing. The per-image
ops (fused decode-and-crop, flips, PCA lighting, ten crops, pixel scale) are in
``alexnet_jax.preprocessing``; the mean image and PCA statistics in
``alexnet_jax.stats``.

INTERFACE (used by train.py):

  dataset_info(config) -> DatasetInfo(num_train, num_eval, num_classes)
      Raises DatasetNotFoundError naming the exact preparation steps.
  train_iterator(config, *, batch_size, start_step=0, process_index=0, process_count=1)
      Infinite iterator of {'image': float32 (b, S, S, 3), 'label': int32 (b,)},
      b = per-process batch, S = config.model.input_size. Batch k is a
      deterministic function of (config.seed, k, process_index, process_count),
      so a run restarted with start_step=k continues the same stream.
  eval_iterator(config, *, batch_size, ten_crop=False, process_index=0, process_count=1)
      One pass over this process's share of the eval split; every process
      yields the same number of batches. {'image': (b, S, S, 3) or (b, 10, S, S, 3),
      'label': (b,), 'mask': bool (b,)}; padded examples have mask False.

Sources (config.dataset.source):
  'tfds'    a tfds image-classification dataset prepared in config.dataset.data_dir,
            e.g. imagenet2012 from the two ILSVRC2012 tars (see prepare_tfds).
  'folder'  config.dataset.folder/<split>/<class>/*.{jpg,jpeg,png,bmp,gif}; the
            classes are the train split's sub-folders in sorted order ('validation'
            falls back to a folder named 'val').
  'digits'  scikit-learn's 8x8 digits in memory (the no-download default), the
            last 360 images are the eval split. Same tf.data code as the others.

Order and resume. Training reads in passes of steps_per_epoch = num_train //
(batch_size * process_count) steps (the remainder of each shuffled pass is
dropped). Pass e's order depends on (config.seed, e) only:
  folder, digits: a stateless permutation of the whole split; global batch s
      is positions [s*G, (s+1)*G) of it, process p takes [s*G + p*b, s*G + (p+1)*b).
  tfds: process p reads its ``tfds.even_splits`` share, shard files in a seeded
      order, interleaved deterministically, through a seeded shuffle buffer.
Each image's crop, flip and PCA draws come from a stateless seed folded from
(config.seed, e, position in the pass). train_iterator(start_step=k) starts at
pass k // spe and skips (k % spe) * b examples *before* decoding (for tfds the
skipped records are still read, at most one pass of I/O; nothing is decoded).

Corrupt images. Examples are decoded in a parallel map followed by
ignore_errors, each carrying its sequence number; a file that does not decode
(truncated, not an image, unreadable) is dropped there and its row is restored
in Python: in a training batch by a copy of another image of the same batch,
in evaluation with mask False. So it neither crashes the run nor is trained
on, and batches stay aligned with the order (a resume is still exact). Its
name is looked up (replaying the undecoded key stream), logged once and
listed by ``corrupt_images()``.
"""

import dataclasses
import functools
import math
import os
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from alexnet_jax import preprocessing as pp
from alexnet_jax import stats as stats_lib

_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
_DIGITS_EVAL = 360  # scikit-learn digits: the last 360 images are the eval split
# Salts that keep the order stream and the augmentation stream independent.
_ORDER, _AUGMENT = 0, 1
_INF_EPOCHS = 2**62
_AUTOTUNE = tf.data.AUTOTUNE

_corrupt = {}  # name -> number of times seen


class DatasetNotFoundError(FileNotFoundError):
  """The configured dataset is not prepared; the message says how to prepare it."""


class DatasetInfo(NamedTuple):
  num_train: int
  num_eval: int
  num_classes: int


def corrupt_images() -> List[str]:
  """Names of the images this process could not decode so far (each logged once)."""
  return sorted(_corrupt)


def _report_corrupt(names: Sequence[bytes], where: str) -> None:
  for name in names:
    name = name.decode() if isinstance(name, bytes) else str(name)
    if name not in _corrupt:
      logging.warning('Could not decode %s image %r; %s. (%d corrupt so far.)',
                      where, name, 'replaced by another image of its batch'
                      if where == 'training' else 'excluded (mask False)',
                      len(_corrupt) + 1)
    _corrupt[name] = _corrupt.get(name, 0) + 1


# --------------------------------------------------------------------------
# Sources: each split is a set of keys, a pass order over them and `load`.
# --------------------------------------------------------------------------


def _fold(seed: tf.Tensor, *data) -> tf.Tensor:
  for d in data:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(d, tf.int64))
  return seed


def _scalar_seed(seed: tf.Tensor) -> tf.Tensor:
  return tf.random.stateless_uniform([], seed, minval=None, maxval=None,
                                     dtype=tf.int64)


class _Split:
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


class _ArraySplit(_Split):
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
        _fold(tf.constant([seed, _ORDER], tf.int64), epoch))
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


class _TfdsSplit(_Split):
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
    order = _fold(tf.constant([seed, _ORDER], tf.int64), epoch, process_index)
    if self._cache:  # the share's serialized records, read once, kept in memory
      if subsplit not in self._cached:
        self._cached[subsplit] = self._records(subsplit).cache()
      records = self._cached[subsplit]
    else:
      records = self._records(subsplit, file_seed=_scalar_seed(_fold(order, 0)))
    if self._shuffle_buffer > 1:
      records = records.shuffle(self._shuffle_buffer,
                                seed=_scalar_seed(_fold(order, 1)))
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
class _Source:
  num_classes: int
  split: Callable[[str], _Split]  # split name -> _Split
  train_split: str
  eval_split: str


# ----------------------------------------------------------------- digits


def _digits_arrays(split: str):
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  d = datasets.load_digits()
  images = (d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
  labels = d.target.astype(np.int32)
  if split == 'train':
    return images[:-_DIGITS_EVAL], labels[:-_DIGITS_EVAL]
  return images[-_DIGITS_EVAL:], labels[-_DIGITS_EVAL:]


@functools.lru_cache(maxsize=None)
def _digits_source() -> _Source:
  def split(name):
    images, labels = _digits_arrays('train' if name == 'train' else 'eval')
    names = np.array([f'digits/{name}/{i}' for i in range(len(labels))])
    return _ArraySplit(images, labels, names, paths=False)
  return _Source(10, functools.lru_cache(maxsize=None)(split), 'train', 'eval')


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
def _folder_source(root: str, train_split: str, eval_split: str) -> _Source:
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
    return _ArraySplit(np.array(paths), np.array(labels, np.int32),
                       np.array(paths), paths=True)

  return _Source(len(classes), functools.lru_cache(maxsize=None)(split),
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
        f'     (or in Python: alexnet_jax.input_pipeline.prepare_tfds(config), which calls\n'
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
def _tfds_source(spec: _TfdsSpec) -> _Source:
  builder = _tfds_builder(spec)
  if not builder.is_prepared():
    if not spec.download or getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
      raise _tfds_not_found(spec, builder)
    logging.info('Downloading and preparing tfds %s in %s (config.dataset.download=True).',
                 spec.name, _tfds_data_dir(spec))
    builder.download_and_prepare()
  split = functools.lru_cache(maxsize=None)(
      lambda name: _TfdsSplit(builder, name, spec))
  return _Source(builder.info.features[spec.label_key].num_classes, split,
                 spec.train_split, spec.eval_split)


def _source(config) -> _Source:
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
  source = _source(config)
  return DatasetInfo(source.split(source.train_split).size,
                     source.split(source.eval_split).size, source.num_classes)


# --------------------------------------------------------------------------
# Preprocessing settings
# --------------------------------------------------------------------------


def make_recipe(config) -> pp.Recipe:
  """config.input (+ statistics) as a preprocessing.Recipe."""
  inp = config.input
  if inp.mean not in ('image', 'channel', 'none'):
    raise ValueError(f'config.input.mean={inp.mean!r}; expected image, channel or none.')
  if inp.mean == 'image' and (inp.random_resized_crop or not inp.central_crop):
    raise ValueError('config.input.mean="image" needs central_crop=True and '
                     'random_resized_crop=False (the mean image is of the central '
                     'R x R crops); use mean="channel" with those.')
  stats = None
  if inp.mean != 'none' or inp.pca_lighting > 0:
    stats = stats_lib.for_config(config)
    logging.log_first_n(logging.INFO, 'Input statistics: %s', 1, stats.source)
  mean = None
  if inp.mean == 'image':
    mean = stats.mean_image
  elif inp.mean == 'channel':
    mean = stats.channel_mean.reshape(1, 1, 3)
  return pp.Recipe(
      resize_size=inp.resize_size,
      crop_size=config.model.input_size,
      central_crop=inp.central_crop,
      random_crop=inp.random_crop,
      flip=inp.flip,
      pca_std=float(inp.pca_lighting),
      antialias=inp.get('antialias', False),
      fast_train_resample=inp.get('fast_train_resample', True),
      random_resized_crop=inp.random_resized_crop,
      rrc_area=tuple(inp.get('rrc_area', (0.08, 1.0))),
      rrc_aspect=tuple(inp.get('rrc_aspect', (3 / 4, 4 / 3))),
      mean=mean,
      pixel_scale=float(inp.get('pixel_scale', 1.0)),
      eigval=None if stats is None else stats.eigval,
      eigvec=None if stats is None else stats.eigvec)


def _options(config) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  threads = config.dataset.get('threads', 0)
  if threads:
    options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  return options


# --------------------------------------------------------------------------
# Images that do not decode: dropped in tf.data, their rows restored here
# --------------------------------------------------------------------------


def _decode(ds: tf.data.Dataset, fn: Callable) -> tf.data.Dataset:
  """(seq, key) -> {**fn(key), 'seq'}; an example whose fn raises is dropped."""
  def apply(seq, key):
    return {**fn(key), 'seq': seq}
  ds = ds.map(apply, num_parallel_calls=_AUTOTUNE, deterministic=True)
  return ds.ignore_errors(log_warning=True)


def _check_decodes(split: _Split, fn: Callable, tries: int = 16) -> None:
  """Fails loudly if none of the split's first examples decodes (a bug, not bad files).

  Without this, a pipeline whose every example raises would drop them all
  and wait forever. fn takes a key of the split.
  """
  error = None
  for key in split.share(0, 1)[0].take(tries):  # in stored order, no shuffle
    try:
      fn(key)
      return
    except tf.errors.OpError as e:  # pylint: disable=broad-except
      error = e
  if error is not None:
    raise RuntimeError(f'None of the first {tries} examples decodes; the last '
                       f'error: {error.message}') from error


def _aligned(batches: Iterator[dict], batch_size: int, first: int,
             end: Optional[int] = None) -> Iterator[Tuple[int, dict, np.ndarray]]:
  """Regroups rows by 'seq' into windows [start, start + b) from `first` on.

  Yields (start, values, present): values has b rows (rows of dropped
  examples are zeros), present (b,) bool. Without drops every tf.data batch is
  exactly one window and passes through uncopied; after a drop, windows span
  two batches and are copied. `end`: the sequence is finite, [first, end).
  """
  start, carry = first, None

  def emit(rows):
    offset = rows['seq'] - start
    values = {k: v for k, v in rows.items() if k != 'seq'}
    if len(offset) == batch_size:
      return values, np.ones(batch_size, bool)
    present = np.zeros(batch_size, bool)
    present[offset] = True
    full = {}
    for k, v in values.items():
      full[k] = np.zeros((batch_size,) + v.shape[1:], v.dtype)
      full[k][offset] = v
    return full, present

  for batch in batches:
    carry = batch if carry is None else {
        k: np.concatenate([carry[k], batch[k]]) for k in batch}
    while carry is not None:
      n = int(np.searchsorted(carry['seq'], start + batch_size))
      if n == len(carry['seq']) and n < batch_size:
        break  # the window may still fill: read on
      yield (start, *emit({k: v[:n] for k, v in carry.items()}))
      start += batch_size
      carry = {k: v[n:] for k, v in carry.items()} if n < len(carry['seq']) else None
  while end is not None and start < end:  # the stream ended: flush the rest
    rows = carry if carry is not None else None
    if rows is None:
      rows = {'seq': np.zeros([0], np.int64)}
    n = int(np.searchsorted(rows['seq'], start + batch_size))
    taken = {k: v[:n] for k, v in rows.items()}
    if len(taken) == 1:  # nothing at all decoded in this window
      yield start, None, np.zeros(batch_size, bool)
    else:
      yield (start, *emit(taken))
    start += batch_size
    carry = {k: v[n:] for k, v in rows.items()} if n < len(rows['seq']) else None


def _missing(start: int, present: np.ndarray, name_of: Callable[[int], str],
             where: str) -> None:
  names = [name_of(start + i) for i in np.flatnonzero(~present)]
  _report_corrupt(names, where)


def _name_in(keys: tf.data.Dataset, name: Callable, seq: int) -> str:
  """The name of example `seq` of a (seq, key) dataset (reads up to it, decodes nothing)."""
  ds = keys.filter(lambda s, key: s == seq).take(1)
  for _, key in ds:
    return name(key).numpy().decode()
  return f'#{seq}'


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


def steps_per_epoch(num_train: int, global_batch: int) -> int:
  steps = num_train // global_batch
  if steps < 1:
    raise ValueError(f'{num_train} training images do not fill one global batch '
                     f'of {global_batch}.')
  return steps


def train_iterator(config, *, batch_size: int, start_step: int = 0,
                   process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """Training batches from `start_step` on (see the module docstring)."""
  source = _source(config)
  split = source.split(source.train_split)
  recipe = make_recipe(config)
  spe = steps_per_epoch(split.size, batch_size * process_count)
  first_epoch, first_skip = divmod(start_step, spe)
  seed = config.seed
  shard = process_index if split.per_process_positions else 0

  def epoch(e):
    ds = split.epoch(e, spe, batch_size, process_index, process_count, seed)
    ds = ds.skip(tf.where(e == first_epoch, tf.constant(first_skip * batch_size, tf.int64),
                          tf.constant(0, tf.int64)))
    return ds.map(lambda position, key: (e, position, key))

  def load(element):
    e, position, key = element
    ex = split.load(key)
    rng = _fold(tf.constant([seed, _AUGMENT], tf.int64), e, shard, position)
    image = pp.train_image(ex['image'], rng, recipe)
    return {'image': image, 'label': ex['label']}

  first_seq = start_step * batch_size  # seq: examples since step 0 (this process)
  keys = tf.data.Dataset.range(first_epoch, _INF_EPOCHS).flat_map(epoch)
  keys = keys.enumerate(start=first_seq)
  _check_decodes(split, lambda key: load((tf.constant(0, tf.int64),) * 2 + (key,)))
  ds = _decode(keys, load).batch(batch_size).prefetch(_AUTOTUNE)
  ds = ds.with_options(_options(config))

  def name_of(seq):
    step, i = divmod(seq, batch_size)
    e, k = divmod(step, spe)
    position = (k * batch_size + i if split.per_process_positions
                else (k * process_count + process_index) * batch_size + i)
    ds = split.epoch(e, spe, batch_size, process_index, process_count, seed)
    return _name_in(ds, split.name, position)

  for start, values, present in _aligned(ds.as_numpy_iterator(), batch_size, first_seq):
    if present.all():
      yield values
      continue
    _missing(start, present, name_of, 'training')
    valid = np.flatnonzero(present)
    if not len(valid):
      raise RuntimeError(f'No image of training step {start // batch_size} decodes.')
    bad = np.flatnonzero(~present)  # replaced by copies of images that decoded
    source_rows = valid[np.arange(len(bad)) % len(valid)]
    for v in values.values():
      v[bad] = v[source_rows]
    yield values


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------


def eval_iterator(config, *, batch_size: int, ten_crop: bool = False,
                  process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """One pass over this process's share of the eval split (section 6 crops)."""
  source = _source(config)
  split = source.split(source.eval_split)
  recipe = make_recipe(config)
  keys, sizes = split.share(process_index, process_count)
  keys = keys.map(lambda *key: key[0] if len(key) == 1 else key).enumerate()
  num_batches = math.ceil(max(sizes) / batch_size)
  s = config.model.input_size
  shape = [pp.num_eval_crops(recipe), s, s, 3] if ten_crop else [s, s, 3]

  def load(key):
    ex = split.load(key)
    image = pp.eval_image(ex['image'], recipe, ten_crop=ten_crop)
    return {'image': image, 'label': ex['label']}

  ds = _decode(keys, load).batch(batch_size).prefetch(_AUTOTUNE)
  batches = ds.with_options(_options(config)).as_numpy_iterator()
  mine = sizes[process_index]
  aligned = _aligned(batches, batch_size, 0, end=mine)
  for b in range(num_batches):
    if b * batch_size >= mine:  # this process's share is shorter: fully masked
      yield {'image': np.zeros([batch_size] + shape, np.float32),
             'label': np.zeros([batch_size], np.int32),
             'mask': np.zeros([batch_size], bool)}
      continue
    start, values, present = next(aligned)
    present = present & (start + np.arange(batch_size) < mine)  # last batch: padding
    if values is None:
      values = {'image': np.zeros([batch_size] + shape, np.float32),
                'label': np.zeros([batch_size], np.int32)}
    real = start + np.arange(batch_size) < mine
    if not present[real].all():
      _missing(start, present | ~real, lambda q: _name_in(keys, split.name, q),
               'evaluation')
    if len(values['label']) < batch_size:
      values = {k: np.concatenate([v, np.zeros((batch_size - len(v),) + v.shape[1:],
                                               v.dtype)]) for k, v in values.items()}
    yield {'image': values['image'], 'label': values['label'], 'mask': present}


# --------------------------------------------------------------------------
# Statistics (alexnet_jax.stats)
# --------------------------------------------------------------------------


def stats_images(config, num_images: Optional[int] = None,
                 batch_size: int = 64) -> Iterator[np.ndarray]:
  """(n, R, R, 3) float32 0-255 training images (shorter side R, central crop).

  The first `num_images` (None: all) of training pass 0's order; images that
  do not decode are reported and left out.
  """
  source = _source(config)
  split = source.split(source.train_split)
  n = split.size if num_images is None else min(num_images, split.size)
  r = config.input.resize_size
  antialias = config.input.get('antialias', False)
  keys = split.epoch(0, n, 1, 0, 1, config.seed)  # (position, key), position = seq

  def load(key):
    image, _ = pp.base_image(split.load(key)['image'], r, True, antialias)
    return {'image': image}

  _check_decodes(split, load)
  ds = _decode(keys, load).batch(batch_size).prefetch(_AUTOTUNE)
  batches = ds.with_options(_options(config)).as_numpy_iterator()
  for start, values, present in _aligned(batches, batch_size, 0, end=n):
    real = start + np.arange(batch_size) < n
    if not present[real].all():
      _missing(start, present | ~real, lambda q: _name_in(keys, split.name, q),
               'statistics')
    if values is not None:
      yield values['image'][present]


# --------------------------------------------------------------------------
# Class names (saved in the workdir; read by predict and figures)
# --------------------------------------------------------------------------


def class_names(config) -> List[str]:
  """The names of class ids 0..K-1: digits '0'..'9', the folder source's train
  sub-directories (sorted, as their ids), a tfds dataset's label names."""
  ds = config.dataset
  if ds.source == 'digits':
    return [str(i) for i in range(10)]
  if ds.source == 'folder':
    train_dir = _folder_dir(ds.folder, ds.train_split)
    return sorted(c.rstrip('/') for c in tf.io.gfile.listdir(train_dir)
                  if tf.io.gfile.isdir(os.path.join(train_dir, c)))
  if ds.source == 'tfds':
    return list(_tfds_builder(ds).info.features[ds.label_key].names)
  raise ValueError(f'config.dataset.source={ds.source!r}; expected tfds, folder or digits.')
