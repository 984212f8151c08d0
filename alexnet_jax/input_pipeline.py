"""Input pipeline: a data source (alexnet_jax.data_sources) -> tf.data -> uint8 NumPy.

The host half of section 2 (down-sampling to 256 x 256) and section 4.1
(random patches, reflections, PCA lighting, the ten test patches): the host
decodes and sends uint8 pixels plus the few numbers each example's recipe
needs (``alexnet_jax.preprocessing``); the device finishes the recipe inside
the jitted step (``alexnet_jax.augment``: reflection, mean subtraction, PCA
lighting, pixel scale, cutting the test patches). The statistics (mean image,
PCA) are resolved once per run by the training setup (``alexnet_jax.stats``),
not here.

INTERFACE (used by train.py, the tools and the benchmarks):

  data = resolve(config) -> Input(source, recipe, info, seed, dataset)
      The dataset resolved once: raises DatasetNotFoundError naming the exact
      preparation steps. Everything below reads `data`, never the config.
  train_iterator(data, *, batch_size, start_step=0, process_index=0, process_count=1)
      Infinite iterator of {'image': uint8 (b, S, S, 3), 'offset': int32 (b, 2),
      'flip': bool (b,), 'alpha': float32 (b, 3), 'label': int32 (b,)}
      (``preprocessing.train_example``; 154,612 bytes per example at S = 227),
      b = per-process batch, S = data.recipe.crop_size. Batch k is a
      deterministic function of (data.seed, k, process_index, process_count),
      so a run restarted with start_step=k continues the same stream.
  eval_iterator(data, *, batch_size, ten_crop=False, process_index=0, process_count=1)
      One pass over this process's share of the eval split; every process
      yields the same number of batches. {'image': uint8 (b, S, S, 3) centre
      patches, or with ten_crop the (b, R, R, 3) images the device cuts the
      patches from ((b, 5, S, S, 3) patches without a central crop), 'label':
      (b,), 'mask': bool (b,)}; padded examples have mask False.
  stats_images(data, num_images=None) -> batches of R x R training images
      for alexnet_jax.stats.

Sources (config.dataset.source: 'tfds', 'folder', 'digits') are in
``alexnet_jax.data_sources``; all go through the same tf.data code here.

Order and resume. Training reads in passes of steps_per_epoch = num_train //
(batch_size * process_count) steps (the remainder of each shuffled pass is
dropped). Pass e's order depends on (config.seed, e) only:
  folder, digits: a stateless permutation of the whole split; global batch s
      is positions [s*G, (s+1)*G) of it, process p takes [s*G + p*b, s*G + (p+1)*b).
  tfds: process p reads its ``tfds.even_splits`` share, shard files in a seeded
      order, interleaved deterministically, through a seeded shuffle buffer.
  raw (prepare --format=raw): process p reads only its even share of the
      stored order, in a stateless permutation of (seed, e, p); no decode:
      ``_raw_train_iterator`` copies the patches out of memory maps in a
      background thread, with the same draws as every other source.
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

from concurrent import futures
import dataclasses
import inspect
import math
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from alexnet_jax import data_sources
from alexnet_jax import preprocessing as pp
from alexnet_jax import raw_store
# Re-exported: callers see one input module.
from alexnet_jax.data_sources import (  # noqa: F401  pylint: disable=unused-import
    Dataset, DatasetInfo, DatasetNotFoundError, prepare_tfds)

_INF_EPOCHS = 2**62
_AUTOTUNE = tf.data.AUTOTUNE

_corrupt = {}  # name -> number of times seen


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
# --------------------------------------------------------------------------
# Preprocessing settings
# --------------------------------------------------------------------------


def make_recipe(crop_size: int, base_jpegs: bool = False, *, pca_lighting: float,
                **inp) -> pp.Recipe:
  """The host's settings (section 2, 4.1) as a preprocessing.Recipe, from
  config.input's values: `make_recipe(config.model.input_size, **config.input)`.

  Every field of the Recipe is the config.input key of the same name (so a new
  one needs no code here), except crop_size (config.model.input_size), pca_std
  (config.input.pca_lighting) and base_jpegs (the source is prepared R x R
  JPEGs). Keys the Recipe does not name (the statistics', pixel_scale) are the
  device's. configs/ilsvrc.py is the one place for the values.
  """
  fields = inspect.signature(pp.Recipe).parameters
  host = {k: tuple(v) if isinstance(v, (list, tuple)) else v
          for k, v in inp.items() if k in fields}
  return pp.Recipe(crop_size=crop_size, pca_std=float(pca_lighting), base_jpegs=base_jpegs,
                   **host)


def _prepared_jpegs(ds: data_sources.Dataset) -> bool:
  """Whether the source is prepared R x R JPEGs (the resize_size is checked on loading)."""
  if data_sources.source_name(ds) != 'prepared' or not ds.prepared_dir:
    return False
  return data_sources.read_manifest(ds.prepared_dir).get('encoding') == 'jpeg'


@dataclasses.dataclass(frozen=True)
class Input:
  """A dataset resolved once from the config (`resolve`) and passed down: the
  source, the host half of the recipe, and the settings the iterators read."""
  source: data_sources.Source
  recipe: pp.Recipe
  info: DatasetInfo
  seed: int
  dataset: data_sources.Dataset  # config.dataset, as resolved

  @property
  def threads(self) -> int:
    """tf.data threads; 0 = one per CPU core."""
    return int(self.dataset.threads)

  @property
  def train(self) -> data_sources.Split:
    return self.source.split(self.source.train_split)

  @property
  def eval(self) -> data_sources.Split:
    return self.source.split(self.source.eval_split)


def resolve(config) -> Input:
  """config.dataset and config.input resolved once (raises DatasetNotFoundError
  with the preparation steps when the data is missing).

  The input's one reader of the whole config: everything below takes the Input.
  """
  ds, inp = data_sources.Dataset(**config.dataset), config.input
  source = data_sources.for_dataset(ds, inp.resize_size, inp.antialias)
  return Input(source=source,
               recipe=make_recipe(config.model.input_size, _prepared_jpegs(ds), **inp),
               info=data_sources.info_of(source), seed=int(config.seed), dataset=ds)


def _options(threads: int) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  if threads:
    options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  return options


def _decode(ds: tf.data.Dataset, fn: Callable) -> tf.data.Dataset:
  """(seq, key) -> {**fn(key), 'seq'}; an example whose fn raises is dropped.

  The recipe is plain TensorFlow ops (no Python control flow on tensors), so
  autograph's conversion, ~5 s of every pipeline's construction, is skipped."""
  @tf.autograph.experimental.do_not_convert
  def apply(seq, key):
    return {**fn(key), 'seq': seq}
  ds = ds.map(apply, num_parallel_calls=_AUTOTUNE, deterministic=True)
  return ds.ignore_errors(log_warning=True)


def _check_decodes(split: data_sources.Split, fn: Callable, tries: int = 16) -> None:
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


def train_iterator(data: Input, *, batch_size: int, start_step: int = 0,
                   process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """Training batches from `start_step` on (see the module docstring)."""
  split, recipe, seed = data.train, data.recipe, data.seed
  if _raw_fast_path(split, recipe):
    yield from _raw_train_iterator(data, batch_size=batch_size, start_step=start_step,
                                   process_index=process_index, process_count=process_count)
    return
  spe = steps_per_epoch(split.size, batch_size * process_count)
  first_epoch, first_skip = divmod(start_step, spe)
  shard = process_index if split.per_process_positions else 0

  def epoch(e):
    ds = split.epoch(e, spe, batch_size, process_index, process_count, seed)
    ds = ds.skip(tf.where(e == first_epoch, tf.constant(first_skip * batch_size, tf.int64),
                          tf.constant(0, tf.int64)))
    # The pass's part of every image's seed, folded once per pass, not per image.
    epoch_rng = data_sources.fold(tf.constant([seed, data_sources.AUGMENT], tf.int64),
                                  e, shard)
    return ds.map(lambda position, key: (epoch_rng, position, key))

  def load(element):
    epoch_rng, position, key = element
    ex = split.load(key)
    rng = data_sources.fold(epoch_rng, position)  # = fold([seed, AUGMENT], e, shard, position)
    return {**pp.train_example(ex['image'], rng, recipe), 'label': ex['label']}

  first_seq = start_step * batch_size  # seq: examples since step 0 (this process)
  keys = tf.data.Dataset.range(first_epoch, _INF_EPOCHS).flat_map(epoch)
  keys = keys.enumerate(start=first_seq)
  _check_decodes(split, lambda key: load((tf.constant([0, 0], tf.int64),
                                          tf.constant(0, tf.int64), key)))
  ds = _decode(keys, load).batch(batch_size).prefetch(_AUTOTUNE)
  ds = ds.with_options(_options(data.threads))

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


# The raw store (prepare --format=raw): no decode, a gather in a thread
# --------------------------------------------------------------------------

RAW_PREFETCH = 3  # batches the raw reader's thread makes ahead


def raw_gather_threads(threads: int) -> int:
  """Threads copying raw patches: one per 4 of config.dataset.threads (0: per
  core). One thread copies ~39,000 patches/s here; the draws' tf.data map
  (~32,000 per thread-second) gets the rest of the threads."""
  import os  # pylint: disable=g-import-not-at-top
  return max(1, (threads or len(os.sched_getaffinity(0))) // 4)


def _raw_fast_path(split: data_sources.Split, recipe: pp.Recipe) -> bool:
  """Whether training reads `split` with the raw gather (section 4.1's crops);
  else through tf.data like any source (RawSplit.load), e.g. other crops."""
  return isinstance(split, data_sources.RawSplit) and not recipe.random_resized_crop


def raw_draws(seed: tf.Tensor, recipe: pp.Recipe) -> dict:
  """The random decisions ``pp.train_example`` makes for an R x R image, without it.

  The same stateless draws from the same seed (section 4.1's patch offset,
  reflection, PCA-lighting alpha), so an image at the same position of the
  same pass gets the same patch from raw as from prepared JPEG/PNG data
  (tests/test_raw.py); 'start': where the patch lies in the stored R x R image.
  """
  seeds, flip, alpha = pp.draws(seed, recipe)
  r = recipe.resize_size
  _, offset, start = pp.patch_window(tf.constant([r, r], tf.int32), seeds[0], recipe)
  return {'offset': offset, 'start': start, 'flip': flip, 'alpha': alpha}


def _raw_train_iterator(data: Input, *, batch_size: int, start_step: int,
                        process_index: int, process_count: int) -> Iterator[dict]:
  """train_iterator on a raw store: the same batches, read at random.

  Pass e's order is ``RawSplit.order`` (a permutation of this process's share
  from (seed, e, process)), so a resume at step k slices it at once. The
  draws (offset, flip, alpha) are computed in a small tf.data pipeline from
  the same seeds as train_iterator's; a background thread
  (``raw_store.Gatherer``) copies each patch out of the memory-mapped shards
  into the batch, RAW_PREFETCH batches ahead.
  """
  split, recipe, seed, b = data.train, data.recipe, data.seed, batch_size
  spe = steps_per_epoch(split.size, b * process_count)
  first_epoch, first_skip = divmod(start_step, spe)

  def epoch(e):
    positions = tf.data.Dataset.range(spe * b).skip(tf.where(
        e == first_epoch, tf.constant(first_skip * b, tf.int64), tf.constant(0, tf.int64)))
    epoch_rng = data_sources.fold(tf.constant([seed, data_sources.AUGMENT], tf.int64),
                                  e, process_index)
    return positions.map(lambda position: (epoch_rng, position))

  draw = tf.autograph.experimental.do_not_convert(
      lambda epoch_rng, position: raw_draws(data_sources.fold(epoch_rng, position), recipe))
  draws = tf.data.Dataset.range(first_epoch, _INF_EPOCHS).flat_map(epoch)
  draws = draws.map(draw, num_parallel_calls=_AUTOTUNE, deterministic=True)
  draws = draws.batch(b).prefetch(_AUTOTUNE).with_options(_options(data.threads))

  def items():  # in the thread: (this step's indices, its draws)
    order = (None, None)
    for step, d in enumerate(draws.as_numpy_iterator(), start_step):
      e, k = divmod(step, spe)
      if order[0] != e:
        order = (e, split.order(e, process_index, process_count, seed))
      yield order[1][k * b:(k + 1) * b], d

  workers = raw_gather_threads(data.threads)
  pool = futures.ThreadPoolExecutor(workers) if workers > 1 else None

  def make(item):
    index, d = item
    image = raw_store.empty_aligned((b, recipe.crop_size, recipe.crop_size, 3))
    if pool is None:
      split.store.crop_into(image, index, d['start'])
    else:  # the batch's rows in `workers` parts (NumPy's copies release the GIL)
      parts = [slice(r[0], r[-1] + 1) for r in np.array_split(np.arange(b), workers)]
      list(pool.map(lambda r: split.store.crop_into(image[r], index[r], d['start'][r]),
                    parts))
    return {'image': image, 'offset': d['offset'], 'flip': d['flip'],
            'alpha': d['alpha'], 'label': split.labels[index]}

  try:
    yield from raw_store.Gatherer(items(), make, RAW_PREFETCH)
  finally:
    if pool is not None:
      pool.shutdown(wait=False)


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------


def eval_iterator(data: Input, *, batch_size: int, ten_crop: bool = False,
                  process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """One pass over this process's share of the eval split (section 4.1 test patches)."""
  split, recipe = data.eval, data.recipe
  keys, sizes = split.share(process_index, process_count)
  keys = keys.map(lambda *key: key[0] if len(key) == 1 else key).enumerate()
  num_batches = math.ceil(max(sizes) / batch_size)
  s, r = recipe.crop_size, recipe.resize_size
  shape = ([s, s, 3] if not ten_crop else [r, r, 3] if recipe.central_crop
           else [5, s, s, 3])

  def load(key):
    ex = split.load(key)
    image = pp.eval_example(ex['image'], recipe, multi_crop=ten_crop)
    return {'image': image, 'label': ex['label']}

  ds = _decode(keys, load).batch(batch_size).prefetch(_AUTOTUNE)
  batches = ds.with_options(_options(data.threads)).as_numpy_iterator()
  mine = sizes[process_index]
  aligned = _aligned(batches, batch_size, 0, end=mine)
  for b in range(num_batches):
    if b * batch_size >= mine:  # this process's share is shorter: fully masked
      yield {'image': np.zeros([batch_size] + shape, np.uint8),
             'label': np.zeros([batch_size], np.int32),
             'mask': np.zeros([batch_size], bool)}
      continue
    start, values, present = next(aligned)
    present = present & (start + np.arange(batch_size) < mine)  # last batch: padding
    if values is None:
      values = {'image': np.zeros([batch_size] + shape, np.uint8),
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
# Images for the statistics (alexnet_jax.stats computes them)
# --------------------------------------------------------------------------


def stats_images(data: Input, num_images: Optional[int] = None,
                 batch_size: int = 64) -> Iterator[np.ndarray]:
  """(n, R, R, 3) float32 0-255 training images (section 2: shorter side R, central crop).

  The same uint8 pixels the device receives for multi-crop evaluation.

  The first `num_images` (None: all) of training pass 0's order; images that
  do not decode are reported and left out.
  """
  split = data.train
  n = split.size if num_images is None else min(num_images, split.size)
  r, antialias = data.recipe.resize_size, data.recipe.antialias
  keys = split.epoch(0, n, 1, 0, 1, data.seed)  # (position, key), position = seq

  def load(key):
    return {'image': pp.base_image_uint8(split.load(key)['image'], r, antialias)}

  _check_decodes(split, load)
  ds = _decode(keys, load).batch(batch_size).prefetch(_AUTOTUNE)
  batches = ds.with_options(_options(data.threads)).as_numpy_iterator()
  for start, values, present in _aligned(batches, batch_size, 0, end=n):
    real = start + np.arange(batch_size) < n
    if not present[real].all():
      _missing(start, present | ~real, lambda q: _name_in(keys, split.name, q),
               'statistics')
    if values is not None:
      yield values['image'][present].astype(np.float32)

