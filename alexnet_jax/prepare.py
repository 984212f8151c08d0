r"""Writes the paper's 256x256 images once, as JPEG TFRecords or raw pixels (section 2).

"ImageNet consists of variable-resolution images ... we down-sampled the
images to a fixed resolution of 256 x 256": the shorter side to
config.input.resize_size, the central crop, with the very resampling the
on-the-fly pipeline uses (``preprocessing.base_image``, config.input.antialias),
rounded to uint8 and stored as JPEG (--jpeg_quality) or PNG (--lossless) in
TFRecords, or (--format=raw) as the uint8 pixels themselves, as cuda-convnet
did: R x R x 3 records in .npy shards (``alexnet_jax.raw_store``; 196,608
bytes per image, no decode while training). Training then reads them with
--config.dataset.prepared_dir=DIR (the manifest says which format) and only
crops, flips and adds PCA lighting; decoding a 256x256 JPEG is several times
cheaper than decoding and resampling a full ImageNet image, and a raw crop is
a memory copy (docs/data.md: which to choose).

  python -m alexnet_jax.prepare --config=configs/ilsvrc.py \
      --config.dataset.data_dir=$TFDS_DATA_DIR --output_dir=$PREPARED \
      [--jpeg_quality=90 | --lossless | --format=raw] [--workers=N] \
      [--splits=train,validation]

reads any source data_sources reads (tfds, folder, digits). And, without
apache_beam (which ``tfds build imagenet2012`` needs), tfds imagenet2012 from
the two ILSVRC2012 tars:

  python -m alexnet_jax.prepare --config=configs/ilsvrc.py --tfds_build \
      --config.dataset.data_dir=$TFDS_DATA_DIR --config.dataset.manual_dir=$TARS

Output (readable by every host: process p of P reads its even share):
  DIR/<split>-<i>-of-<n>.tfrecord       tf.train.Example {image, label, name}
  DIR/<split>-<i>-of-<n>.tfrecord.json  that shard's count, bytes, corrupt files
  (--format=raw: DIR/<split>-<i>-of-<n>.npy, uint8 (count, R, R, 3), and its
   .npy.json with the labels, names, size and CRC-32 as well)
  DIR/prepare.json                      the plan (settings, source, split sizes)
  DIR/manifest.json                     written last: shards, counts, class
                                        names, encoding, corrupt files

Reliability: shards are split among --workers processes (spawn, whole shards
each), which die with the parent (a killed prepare leaves no worker writing).
Every file is written under a '.incomplete' name and renamed when complete,
so a killed run leaves no half-written shard under a final name, and a rerun
with the same settings skips the complete shards and writes the rest; two
runs write byte-identical files. Files that do not decode are left out,
logged and listed in the manifest. A class folder (folder source) with no
images in a split is refused, naming it.
"""

import dataclasses
import json
import multiprocessing
import os
import signal
import threading
import time
from typing import Any, Callable, List, Optional, Sequence

from absl import flags
from absl import logging

from alexnet_jax import cli
from alexnet_jax import progress
from alexnet_jax import stats as stats_lib

FORMAT = 'alexnet_jax.prepared/1'
PLAN = 'prepare.json'
_INCOMPLETE = '.incomplete'
SUMS = '.stats.npz'  # beside each shard: its images' statistics sums (alexnet_jax.stats)


class PrepareError(ValueError):
  """A bad argument or output directory; the message names the fix."""


FORMATS = ('jpeg', 'raw')


@dataclasses.dataclass(frozen=True)
class Settings:
  resize_size: int = 256
  antialias: bool = False
  encoding: str = 'jpeg'              # 'jpeg' | 'png' (lossless) | 'raw' (format raw)
  jpeg_quality: Optional[int] = 90    # None for png and raw
  shard_size: int = 1024              # at most this many examples per shard (even shards)
  # 'jpeg': TFRecords of encoded images (JPEG, or PNG with --lossless); 'raw':
  # uint8 .npy shards (alexnet_jax.raw_store), no decode while training.
  format: str = 'jpeg'

  @classmethod
  def raw(cls, **kw) -> 'Settings':
    return cls(encoding='raw', jpeg_quality=None, format='raw', **kw)

  def validate(self) -> None:
    problems = []
    if self.format not in FORMATS:
      problems.append(f'--format={self.format}: expected {" or ".join(FORMATS)}')
    elif (self.format == 'raw') != (self.encoding == 'raw'):
      problems.append(f'encoding {self.encoding!r} with --format={self.format}')
    if self.encoding not in ('jpeg', 'png', 'raw'):
      problems.append(f'encoding {self.encoding!r}: expected jpeg, png or raw')
    if self.encoding == 'jpeg' and not (
        isinstance(self.jpeg_quality, int) and 1 <= self.jpeg_quality <= 100):
      problems.append(f'--jpeg_quality={self.jpeg_quality}: expected 1..100')
    if self.resize_size < 1:
      problems.append(f'config.input.resize_size={self.resize_size}: expected >= 1')
    if self.shard_size < 1:
      problems.append(f'--shard_size={self.shard_size}: expected >= 1')
    if problems:
      raise PrepareError('; '.join(problems) + '.')


def shard_name(split: str, index: int, count: int, fmt: str = 'jpeg') -> str:
  from alexnet_jax import raw_store  # pylint: disable=g-import-not-at-top
  return f'{split}-{index:05d}-of-{count:05d}' + (raw_store.SUFFIX if fmt == 'raw'
                                                  else '.tfrecord')


def _atomic_write(path: str, data: str) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path + _INCOMPLETE, 'w') as f:
    f.write(data)
  tf.io.gfile.rename(path + _INCOMPLETE, path, overwrite=True)


def _read_json(path: str):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def source_of(config) -> Any:
  """The data_sources.Source that config.dataset names (the originals)."""
  from alexnet_jax import data_sources  # pylint: disable=g-import-not-at-top
  return data_sources.for_dataset(data_sources.Dataset(**config.dataset),
                                  config.input.resize_size, config.input.antialias)


def describe_source(config) -> dict:
  """What the images were prepared from (for the manifest)."""
  from alexnet_jax import data_sources  # pylint: disable=g-import-not-at-top
  ds = data_sources.Dataset(**config.dataset)
  name = data_sources.source_name(ds)
  if name == 'tfds':
    return {'source': 'tfds', 'name': ds.name,
            'data_dir': data_sources.tfds_data_dir(ds)}
  if name == 'folder':
    return {'source': 'folder', 'folder': os.path.abspath(ds.folder)}
  return {'source': name}


# --------------------------------------------------------------------------
# One shard (in a worker process, or in this one)
# --------------------------------------------------------------------------


def write_shard(config, split_name: str, index: int, count: int, settings: Settings,
                output_dir: str) -> dict:
  """Writes shard `index` of `count` of a split; returns its record (count, bytes, corrupt)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from alexnet_jax import preprocessing as pp  # pylint: disable=g-import-not-at-top

  source = source_of(config)
  split = source.split(split_name)
  keys, sizes = split.share(index, count)  # contiguous in stored order
  keys = keys.map(lambda *key: key[0] if len(key) == 1 else key).enumerate()
  r = settings.resize_size

  def encode(seq, key):
    ex = split.load(key)
    image, _ = pp.base_image(ex['image'], r, True, settings.antialias)  # (R, R, 3) float32
    pixels = pp.to_uint8(image)
    if settings.encoding == 'raw':
      data = pixels
    elif settings.encoding == 'png':
      data = tf.io.encode_png(pixels)
    else:
      data = tf.io.encode_jpeg(pixels, quality=settings.jpeg_quality, optimize_size=True)
    return seq, data, tf.cast(ex['label'], tf.int64), ex['name'], pixels

  ds = keys.map(encode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors().prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options)

  final = os.path.join(output_dir, shard_name(split_name, index, count, settings.format))
  written, image_bytes, seen = 0, 0, set()
  sums = stats_lib.Accumulator()  # sections 2, 4.1: of the very pixels stored
  writer = (_RawShardWriter if settings.format == 'raw' else _RecordWriter)(
      final + _INCOMPLETE, sizes[index], r)
  with writer:
    for seq, data, label, name, pixels in ds.as_numpy_iterator():
      seen.add(int(seq))
      sums.add(pixels)
      writer.write(data, label, name)
      written += 1
      image_bytes += data.nbytes if settings.format == 'raw' else len(data)
  corrupt = []
  if written < sizes[index]:  # look up the names of those that did not decode
    for seq, key in keys:
      if int(seq) not in seen:
        corrupt.append(split.name(key).numpy().decode())
  tf.io.gfile.rename(final + _INCOMPLETE, final, overwrite=True)
  stats_lib.save_sums(sums, final + SUMS)
  record = {'file': os.path.basename(final), 'num_examples': written,
            'image_bytes': image_bytes, 'corrupt': corrupt, **writer.record}
  _atomic_write(final + '.json', json.dumps(record))  # the shard is complete
  return {**record, 'split': split_name, 'index': index}


class _RecordWriter:
  """A TFRecord shard of tf.train.Example {image, label, name} (format jpeg)."""

  record = {}

  def __init__(self, path: str, planned: int, resize_size: int):
    del planned, resize_size
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self._tf, self._writer = tf, tf.io.TFRecordWriter(path)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._writer.close()

  def write(self, data: bytes, label: int, name: bytes) -> None:
    tf = self._tf
    # deterministic: the feature map in sorted key order, so that two runs
    # write the same bytes (protobuf's map order otherwise varies by process).
    self._writer.write(tf.train.Example(features=tf.train.Features(feature={
        'image': tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
        'label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        'name': tf.train.Feature(bytes_list=tf.train.BytesList(value=[name])),
    })).SerializeToString(deterministic=True))


class _RawShardWriter:
  """A raw .npy shard (format raw); its record adds bytes, crc32, labels, names."""

  def __init__(self, path: str, planned: int, resize_size: int):
    from alexnet_jax import raw_store  # pylint: disable=g-import-not-at-top
    self._writer = raw_store.Writer(path, planned, resize_size)
    self.record = {}

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.record = self._writer.close()

  def write(self, pixels, label: int, name: bytes) -> None:
    self._writer.write(pixels, label, name)


def _die_with_parent(parent: int) -> None:
  """Ends this worker as soon as process `parent` is gone (kill -9 included):
  on Linux the kernel sends SIGKILL (prctl PR_SET_PDEATHSIG); elsewhere a
  thread polls the parent pid once a second."""
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    pr_set_pdeathsig = 1
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
      raise OSError(ctypes.get_errno(), 'prctl')
  except (OSError, AttributeError):  # not Linux
    def poll():
      while os.getppid() == parent:
        time.sleep(1.0)
      os._exit(1)  # pylint: disable=protected-access
    threading.Thread(target=poll, daemon=True).start()
  if os.getppid() != parent:  # It died before the line above took effect.
    os._exit(1)  # pylint: disable=protected-access


def _worker_init(parent: int) -> None:
  """A spawned worker: dies with its parent; TensorFlow on one thread, no
  accelerator, and imported without its C++ start-up lines (the spawned
  interpreter did not import it through alexnet_jax/__init__.py as `python -m`
  does; oneDNN stays as it is, so the images are the same bytes)."""
  _die_with_parent(parent)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  tf = cli.import_tensorflow_quietly()
  tf.config.set_visible_devices([], 'GPU')
  tf.config.threading.set_inter_op_parallelism_threads(1)
  tf.config.threading.set_intra_op_parallelism_threads(1)


def _worker(task) -> dict:
  return write_shard(*task)


# --------------------------------------------------------------------------
# The whole dataset
# --------------------------------------------------------------------------


def plan(config, splits: Sequence[str], settings: Settings) -> dict:
  """What prepare will write; raises DatasetNotFoundError / PrepareError first."""
  from alexnet_jax import data_sources  # pylint: disable=g-import-not-at-top
  if data_sources.source_name(data_sources.Dataset(**config.dataset)) == 'prepared':
    raise PrepareError('prepare reads the original images (config.dataset.source '
                       'tfds, folder or digits), not prepared ones: unset '
                       'config.dataset.prepared_dir / source.')
  settings.validate()
  source = source_of(config)
  sizes = {}  # A folder class without images raises data_sources.FolderClassError here.
  for name in splits:
    try:
      sizes[name] = source.split(name).size
    except KeyError as e:  # tfds: no such split
      raise PrepareError(f'--splits: the source has no split {name!r} ({e}).') from None
  return {
      'format': FORMAT,
      'source': describe_source(config),
      # format jpeg is left out: plans written before --format existed still match
      'settings': {k: v for k, v in dataclasses.asdict(settings).items()
                   if (k, v) != ('format', 'jpeg')},
      'splits': {n: {'num_examples': s, 'num_shards': max(1, -(-s // settings.shard_size))}
                 for n, s in sizes.items()},
      'train_split': source.train_split if source.train_split in sizes else splits[0],
      'eval_split': source.eval_split if source.eval_split in sizes else splits[-1],
      'num_classes': source.num_classes,
      'class_names': list(source.class_names),
  }


def default_splits(config) -> List[str]:
  source = source_of(config)
  return [source.train_split, source.eval_split]


def _manifest(the_plan: dict, settings: Settings, done: dict) -> dict:
  """manifest.json of a finished preparation: the plan's dataset, the settings,
  and every shard's examples, bytes and corrupt files."""
  manifest = {k: the_plan[k] for k in ('format', 'source', 'train_split', 'eval_split',
                                       'num_classes', 'class_names')}
  manifest.update(resize_size=settings.resize_size, antialias=settings.antialias,
                  encoding=settings.encoding, jpeg_quality=settings.jpeg_quality)
  manifest['splits'], image_bytes, corrupt = {}, 0, []
  for name, s in the_plan['splits'].items():
    shards = [done[(name, i)] for i in range(s['num_shards'])]
    manifest['splits'][name] = {
        'num_examples': sum(r['num_examples'] for r in shards),
        'shards': [{k: r[k] for k in ('file', 'num_examples', 'bytes', 'crc32') if k in r}
                   for r in shards],
        'corrupt': [c for r in shards for c in r['corrupt']]}
    image_bytes += sum(r['image_bytes'] for r in shards)
    corrupt += manifest['splits'][name]['corrupt']
  images = sum(v['num_examples'] for v in manifest['splits'].values())
  manifest['image_bytes'] = image_bytes
  manifest['bytes_per_image'] = image_bytes / max(images, 1)
  manifest['corrupt'] = corrupt
  return manifest


def _finish(the_plan: dict, settings: Settings, done: dict, output_dir: str,
            out: Callable[[str], None]) -> dict:
  """Writes DIR/stats.npz, the training split's mean image and RGB PCA
  (sections 2, 4.1: its shards' sums added in shard order), then the
  manifest (last); returns the manifest."""
  from alexnet_jax import data_sources  # pylint: disable=g-import-not-at-top
  name = the_plan['train_split']
  n = the_plan['splits'][name]['num_shards']
  sums = stats_lib.Accumulator()
  for i in range(n):
    shard = shard_name(name, i, n, settings.format)
    sums.merge(stats_lib.load_sums(os.path.join(output_dir, shard + SUMS)))
  stats = sums.result(stats_lib.prepared_source(sums.count, name))
  stats_lib.save(stats, os.path.join(output_dir, stats_lib.PREPARED))
  out(f'Input statistics: {stats.source}: channel mean {stats.channel_mean.round(2)}, '
      f'PCA eigenvalues {stats.eigval.round(5)} (DIR/{stats_lib.PREPARED}).')
  manifest = _manifest(the_plan, settings, done)
  _atomic_write(os.path.join(output_dir, data_sources.MANIFEST),
                json.dumps(manifest, indent=1, sort_keys=True))
  return manifest


_ENCODINGS = {'png': 'PNG', 'raw': 'raw uint8 (.npy shards)'}


def prepare(config, output_dir: str, settings: Settings = Settings(),
            splits: Optional[Sequence[str]] = None, workers: int = 1,
            out: Callable[[str], None] = print) -> dict:
  """Writes (or finishes) the prepared dataset in output_dir; returns the manifest."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not output_dir:
    raise PrepareError('--output_dir is empty: name the directory to write.')
  if tf.io.gfile.exists(output_dir) and not tf.io.gfile.isdir(output_dir):
    raise PrepareError(f'--output_dir={output_dir} is a file, not a directory.')
  if workers < 1:
    raise PrepareError(f'--workers={workers}: expected >= 1.')
  settings = dataclasses.replace(settings, resize_size=config.input.resize_size,
                                 antialias=bool(config.input.antialias))
  splits = list(splits or default_splits(config))
  if len(set(splits)) != len(splits) or not all(splits):
    raise PrepareError(f'--splits={",".join(splits)}: expected distinct split names.')
  the_plan = plan(config, splits, settings)
  plan_path = os.path.join(output_dir, PLAN)
  if tf.io.gfile.exists(plan_path):
    old = _read_json(plan_path)
    if old != the_plan:
      diff = sorted(k for k in set(old) | set(the_plan) if old.get(k) != the_plan.get(k))
      raise PrepareError(
          f'{output_dir} holds a preparation with other {", ".join(diff)} '
          f'({json.dumps({k: old.get(k) for k in diff})}); use another --output_dir, '
          'or delete it to start again.')
  tf.io.gfile.makedirs(output_dir)
  _atomic_write(plan_path, json.dumps(the_plan, indent=1, sort_keys=True))

  tasks, done = [], {}
  for name, s in the_plan['splits'].items():
    for i in range(s['num_shards']):
      path = os.path.join(output_dir, shard_name(name, i, s['num_shards'], settings.format))
      if all(tf.io.gfile.exists(path + x) for x in ('', SUMS, '.json')):
        done[(name, i)] = _read_json(path + '.json')  # complete: skipped
      else:
        tasks.append((config, name, i, s['num_shards'], settings, output_dir))
  total = sum(s['num_examples'] for s in the_plan['splits'].values())
  finished = sum(len(r['corrupt']) + r['num_examples'] for r in done.values())
  what = ', '.join(f'{n} ({s["num_examples"]:,} images, {s["num_shards"]} shards)'
                   for n, s in the_plan['splits'].items())
  out(f'Preparing {what} '
      f'from {json.dumps(the_plan["source"])} into {output_dir}: '
      f'{settings.resize_size}x{settings.resize_size}, '
      f'{_ENCODINGS.get(settings.encoding) or f"JPEG quality {settings.jpeg_quality}"}, '
      f'{min(workers, max(len(tasks), 1))} worker(s); {len(done)} shard(s) already complete.')
  meter = progress.Meter('prepare', total, 'images', done=finished, every_s=5.0,
                         quiet_below_s=0.0, out=out)
  shards, done_shards = len(tasks) + len(done), len(done)
  if tasks:
    if workers == 1 or len(tasks) == 1:
      results = (write_shard(*t) for t in tasks)
      pool = None
    else:
      pool = multiprocessing.get_context('spawn').Pool(
          min(workers, len(tasks)), initializer=_worker_init, initargs=(os.getpid(),))
      results = pool.imap_unordered(_worker, tasks)
    try:
      for r in results:
        done[(r['split'], r['index'])] = r
        if r['corrupt']:
          for name in r['corrupt']:
            logging.warning('Could not decode %r; left out of the prepared data.', name)
        done_shards += 1
        meter.update(r['num_examples'] + len(r['corrupt']), f' ({done_shards}/{shards} shards)')
    finally:
      if pool is not None:
        pool.terminate()
        pool.join()

  manifest = _finish(the_plan, settings, done, output_dir, out)
  for f in tf.io.gfile.listdir(output_dir):  # leftovers of killed runs
    if f.endswith(_INCOMPLETE):
      tf.io.gfile.remove(os.path.join(output_dir, f))
  num_shards = sum(len(v['shards']) for v in manifest['splits'].values())
  images, image_bytes, corrupt = (sum(v['num_examples'] for v in manifest['splits'].values()),
                                  manifest['image_bytes'], manifest['corrupt'])
  out(f'Wrote {images:,} images in {num_shards} shards to {output_dir}: {image_bytes / 1e6:,.1f} MB, '
      f'{manifest["bytes_per_image"] / 1e3:.1f} KB per image; {len(corrupt)} corrupt '
      f'file(s) left out{": " + ", ".join(corrupt) if corrupt else ""}.')
  out(f'Train on it with --config.dataset.prepared_dir={output_dir}')
  return manifest


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

# Flags are defined only when this module is the program (or by a caller with
# its own FlagValues), so that importing it does not clash with main's --config.


def define_flags(fv: flags.FlagValues = flags.FLAGS,
                 sys_argv: Optional[List[str]] = None) -> None:
  flags.DEFINE_string('output_dir', None, 'Directory to write the prepared shards to.',
                      flag_values=fv)
  flags.DEFINE_integer('jpeg_quality', 90, 'JPEG quality of the stored images (1..100).',
                       flag_values=fv)
  flags.DEFINE_bool('lossless', False, 'Store PNG (lossless) instead of JPEG.',
                    flag_values=fv)
  flags.DEFINE_enum('format', 'jpeg', list(FORMATS),
                    'jpeg: TFRecords of JPEG (or PNG, --lossless) images, ~22 KB '
                    'per 256x256 image, decoded while training; raw: uint8 .npy '
                    'shards, 196,608 bytes per image, no decode (docs/data.md).',
                    flag_values=fv)
  flags.DEFINE_integer('workers', 0, 'Worker processes; 0 = one per available CPU core.',
                       flag_values=fv)
  flags.DEFINE_list('splits', None, 'Splits to prepare; default the config\'s train '
                    'and eval splits.', flag_values=fv)
  flags.DEFINE_integer('shard_size', 1024, 'Images per shard.', flag_values=fv)
  flags.DEFINE_bool('tfds_build', False, 'Prepare the tfds dataset config.dataset.name '
                    'in config.dataset.data_dir (manual files in '
                    'config.dataset.manual_dir) with tfds\' download_and_prepare; no '
                    'apache_beam needed.', flag_values=fv)
  cli.config_flag(None, 'Config file (configs/*.py[:arg]) whose dataset to prepare.',
                  flag_values=fv, sys_argv=sys_argv)
  flags.mark_flags_as_required(['config'], flag_values=fv)


def run(fv: flags.FlagValues = flags.FLAGS) -> None:
  """The command on parsed flags; a user's error raises (cli reports it in one line)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  from alexnet_jax import data_sources  # pylint: disable=g-import-not-at-top
  config = fv.config
  try:
    if fv.lossless and fv['jpeg_quality'].present:
      raise PrepareError('--lossless stores PNG; drop --jpeg_quality (or --lossless).')
    if fv.format == 'raw' and (fv.lossless or fv['jpeg_quality'].present):
      raise PrepareError('--format=raw stores the pixels themselves; drop '
                         '--lossless / --jpeg_quality.')
    if not fv.tfds_build and not fv.output_dir:
      raise PrepareError('Pass --output_dir=DIR (the prepared images) and/or '
                         '--tfds_build (prepare the tfds dataset itself).')
    if fv.tfds_build:
      ds = data_sources.Dataset(**config.dataset)
      if data_sources.source_name(ds) != 'tfds':
        raise PrepareError(f'--tfds_build prepares a tfds dataset; the config\'s '
                           f'source is {data_sources.source_name(ds)!r}.')
      start = time.monotonic()
      data_sources.prepare_tfds(ds)
      print(f'tfds {config.dataset.name} is prepared in '
            f'{data_sources.tfds_data_dir(config.dataset)} '
            f'({time.monotonic() - start:.0f} s).', flush=True)
    if fv.output_dir:
      if fv.format == 'raw':
        settings = Settings.raw(shard_size=fv.shard_size)
      else:
        settings = Settings(encoding='png' if fv.lossless else 'jpeg',
                            jpeg_quality=None if fv.lossless else fv.jpeg_quality,
                            shard_size=fv.shard_size)
      prepare(config, fv.output_dir, settings, fv.splits,
              fv.workers or len(os.sched_getaffinity(0)),
              out=lambda line: print(line, flush=True))
  except (data_sources.DatasetNotFoundError, ValueError):
    raise
  except (OSError, tf.errors.OpError) as e:  # e.g. disk full while writing
    raise PrepareError(f'{e}\nThe complete shards are kept; rerun the same command to '
                       'write the rest.') from e


def run_command(argv: Sequence[str]) -> int:
  """`python -m alexnet_jax.prepare ARGS` in this process (argv[0] is the program);
  its exit status."""
  fv = flags.FlagValues()
  define_flags(fv, list(argv))
  fv(list(argv))
  try:
    cli.guarded(lambda _: run(fv))(argv)
  except SystemExit as e:
    return int(e.code or 0)
  return 0


def main(argv) -> None:
  del argv
  run(flags.FLAGS)


if __name__ == '__main__':
  cli.run(main, define_flags, config_default=None)
