r"""Training-set statistics: the mean image (section 2) and the RGB PCA (section 4.1).

Section 2: "We did not pre-process the images in any other way, except for
subtracting the mean activity over the training set from each pixel";
section 4.1: "we perform PCA on the set of RGB pixel values throughout the
ImageNet training set".

By default a run uses its whole training split's (`for_dataset`): those
`python -m alexnet_jax.prepare` computed while writing the shards
(DIR/stats.npz, from each shard's `Accumulator` sums); for a folder, computed
by the first run and cached beside it (`cached`); for digits, computed in
memory. Only tfds read on the fly falls back to the published ImageNet
constants of config.input.published_* (a warning says so). The run logs
where its statistics came from. config.input.stats_path overrides all; this
command writes such a file from a sample (in the pipeline's training order):

  python -m alexnet_jax.stats --config=configs/ilsvrc.py \
      --config.dataset.data_dir=$TFDS_DATA_DIR --num_images=50000 \
      --output=$TFDS_DATA_DIR/alexnet_stats_256.npz

(docs/data.md measures how far a 10,000-image sample is from the whole set.)

The mean image is of the R x R images (R = config.input.resize_size: shorter
side rescaled to R, central crop) on the 0-255 scale.

PCA convention (one, for computed and published statistics): ``eigval`` are the
eigenvalues (variances) of the 3x3 covariance of RGB pixel values scaled to
[0, 1], pooled over all pixels of all images (between-image variation
included), sorted in decreasing order; ``eigvec`` their eigenvectors as
columns. The device adds 255 * P (alpha * eigval) to 0-255 pixels
(alexnet_jax.augment). The published constants (fb.resnet.torch: 0.2175,
0.0188, 0.0045) are on this scale: the 258 ImageNet JPEGs of the project's
sample give 0.2040, 0.0167, 0.0038 at 256 x 256 (benchmarks/stats_sample.py). The
smaller "trace 0.153" one gets from torchvision's per-channel std (0.229,
0.224, 0.225) is of per-image standard deviations, averaged, which leave out
the variation between images' mean colours (the same sample: 0.229, 0.226,
0.227 per image vs 0.270, 0.262, 0.278 pooled).
"""

import dataclasses
import io
import os
import zipfile
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Tuple

from absl import flags
from absl import logging
import numpy as np

from alexnet_jax import cli
from alexnet_jax import progress

if TYPE_CHECKING:  # imported when needed: TensorFlow, JAX (prepare's workers need neither)
  from alexnet_jax import augment  # pylint: disable=g-bad-import-order
  from alexnet_jax import data_sources  # pylint: disable=g-bad-import-order

MEAN_MODES = ('image', 'channel', 'none')  # config.input.mean


@dataclasses.dataclass(frozen=True)
class Stats:
  """mean_image: (R, R, 3) float32, 0-255. eigval (3,), eigvec (3, 3): PCA of [0, 1] RGB."""
  mean_image: np.ndarray
  eigval: np.ndarray
  eigvec: np.ndarray
  num_images: int
  source: str           # 'computed: <dataset>' | 'published ImageNet constants'

  @property
  def channel_mean(self) -> np.ndarray:
    return self.mean_image.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)  # (3,)


class Accumulator:
  """Sums of section 2's mean image and section 4.1's RGB covariance, in float64.

  Of raw 0-255 values: the image sum, the number of images, and the sum of
  x x^T over the pixels' RGB vectors x (their sum is the image sum's). For
  uint8 images every sum is an integer below 2^53 (ImageNet at 256: < 6e15),
  so exact and independent of the order in which images and partial sums are
  added (prepare adds its shards' sums).
  """

  def __init__(self):
    self.count = 0
    self.image_sum = None                       # (R, R, 3)
    self.outer_sum = np.zeros((3, 3))

  def add(self, images: np.ndarray) -> None:
    """Adds (n, R, R, 3) or one (R, R, 3) image(s), uint8 or float 0-255."""
    x = np.asarray(images)
    x = x[None] if x.ndim == 3 else x
    if self.image_sum is None:
      self.image_sum = np.zeros(x.shape[1:])
    if x.shape[0] == 1:
      np.add(self.image_sum, x[0], out=self.image_sum)
    else:
      self.image_sum += x.sum(0, dtype=np.float64)
    planes = np.ascontiguousarray(x.reshape(-1, 3).T, dtype=np.float64)  # (3, pixels)
    for i in range(3):  # six dot products, by einsum, not BLAS: OpenBLAS's threads
      for j in range(i, 3):  # fought tf.data's (prepare ran ~10x slower with `@`)
        self.outer_sum[i, j] += np.einsum('p,p->', planes[i], planes[j])
        self.outer_sum[j, i] = self.outer_sum[i, j]
    self.count += x.shape[0]

  @property
  def pixels(self) -> int:
    return self.count * int(np.prod(self.image_sum.shape[:2])) if self.count else 0

  @property
  def rgb_sum(self) -> np.ndarray:
    """The sum of the RGB vectors x: the image sum's, over its pixels."""
    return self.image_sum.reshape(-1, 3).sum(0) if self.count else np.zeros(3)

  def merge(self, other: 'Accumulator') -> 'Accumulator':
    """Adds another accumulator's sums (e.g. a shard's) to this one's."""
    if other.count:
      if self.image_sum is None:
        self.image_sum = np.zeros_like(other.image_sum)
      self.image_sum += other.image_sum
      self.outer_sum += other.outer_sum
      self.count += other.count
    return self

  def arrays(self) -> dict:
    """The sums as arrays (for np.savez); `from_arrays` reads them back."""
    return {'count': self.count, 'outer_sum': self.outer_sum,
            'image_sum': np.zeros(0) if self.image_sum is None else self.image_sum}

  @classmethod
  def from_arrays(cls, d) -> 'Accumulator':
    acc = cls()
    acc.count, acc.outer_sum = int(d['count']), np.array(d['outer_sum'])
    acc.image_sum = np.array(d['image_sum']) if acc.count else None
    return acc

  def result(self, source: str = 'computed') -> Stats:
    """The mean image and the PCA of [0, 1] RGB pixel values (module docstring)."""
    if not self.count:
      raise ValueError('No images to compute statistics from.')
    mean_rgb = self.rgb_sum / self.pixels / 255.0
    cov = self.outer_sum / self.pixels / 255.0**2 - np.outer(mean_rgb, mean_rgb)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    return Stats(mean_image=(self.image_sum / self.count).astype(np.float32),
                 eigval=eigval[order].astype(np.float32),
                 eigvec=eigvec[:, order].astype(np.float32),
                 num_images=self.count, source=source)


def compute(images: Iterable[np.ndarray], source: str = 'computed') -> Stats:
  """Mean image and RGB PCA from batches of (n, R, R, 3) 0-255 images."""
  acc = Accumulator()
  for batch in images:
    acc.add(batch)
  return acc.result(source)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What config.input asks of the statistics: `Settings.of(**config.input)`."""
  mean: str                   # MEAN_MODES: subtract the mean image (section 2), per channel, none
  pca_lighting: float         # section 4.1's std of alpha; 0: no PCA needed
  resize_size: int            # R: the mean image is R x R
  antialias: bool             # how the R x R images were resampled
  stats_path: Optional[str]   # a stats file (this module's output): overrides the others
  central_crop: bool          # the mean image is of central R x R crops ...
  random_resized_crop: bool   # ... which these crops are not
  published_mean_rgb: Tuple[float, float, float]
  published_pca_eigval: Tuple[float, float, float]
  published_pca_eigvec: Tuple[Tuple[float, float, float], ...]

  @classmethod
  def of(cls, **inp) -> 'Settings':
    """From config.input's values (its other keys are the recipe's)."""
    return cls(**{f.name: inp[f.name] for f in dataclasses.fields(cls)})


def published(s: Settings) -> Stats:
  """The published ImageNet constants of config.input (not from the paper)."""
  r = s.resize_size
  mean = np.asarray(s.published_mean_rgb, np.float32)
  return Stats(mean_image=np.broadcast_to(mean, (r, r, 3)).copy(),
               eigval=np.asarray(s.published_pca_eigval, np.float32),
               eigvec=np.asarray(s.published_pca_eigvec, np.float32),
               num_images=0, source='published ImageNet constants')


def _write(path: str, arrays: dict) -> None:
  """np.savez `arrays` to `path` (local or e.g. GCS), under a temporary name
  renamed when complete: no half-written file under the final name."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()  # np.savez's layout; gfile (e.g. GCS) files do not seek
  with zipfile.ZipFile(buf, 'w') as z:  # fixed dates: equal arrays, equal bytes
    for name, value in arrays.items():
      info = zipfile.ZipInfo(f'{name}.npy', (1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED  # integer sums: ~3x smaller
      with z.open(info, 'w') as f:
        np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
  with tf.io.gfile.GFile(path + '.incomplete', 'wb') as f:
    f.write(buf.getvalue())
  tf.io.gfile.rename(path + '.incomplete', path, overwrite=True)


def _read(path: str) -> dict:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, 'rb') as f:
    with np.load(io.BytesIO(f.read())) as d:
      return dict(d)


def save(stats: Stats, path: str, **extra) -> None:
  """Writes `stats` (and `extra` arrays, e.g. a cache's key) as a .npz."""
  _write(path, dict(mean_image=stats.mean_image, eigval=stats.eigval,
                    eigvec=stats.eigvec, num_images=stats.num_images,
                    source=stats.source, **extra))


def _stats_of(d: dict, source: str) -> Stats:
  return Stats(mean_image=d['mean_image'], eigval=d['eigval'], eigvec=d['eigvec'],
               num_images=int(d['num_images']), source=source)


def load(path: str) -> Stats:
  d = _read(path)
  return _stats_of(d, f'{d["source"]} ({path})')


def save_sums(acc: Accumulator, path: str) -> None:
  _write(path, acc.arrays())


def load_sums(path: str) -> Accumulator:
  return Accumulator.from_arrays(_read(path))


def _checked(stats: Stats, s: Settings, path: str) -> Stats:
  r = s.resize_size
  if stats.mean_image.shape != (r, r, 3):
    raise ValueError(
        f'{path} holds a {stats.mean_image.shape} mean image '
        f'but config.input.resize_size={r}; recompute it with alexnet_jax.stats.')
  return stats


def for_settings(s: Settings, images: Optional[Callable[[], Iterable[np.ndarray]]] = None,
                 source: str = 'computed') -> Stats:
  """The statistics `s` asks for: s.stats_path, else computed from `images`, else published.

  images: () -> batches of the training split's R x R images
  (``input_pipeline.stats_images``), given for a small in-memory source
  (digits) whose statistics are computed exactly; the caller passes it, so
  this module does not depend on the pipeline. source: their Stats.source.
  """
  if s.stats_path:
    return _checked(load(s.stats_path), s, s.stats_path)
  if images is not None:
    return compute(images(), source=source)
  logging.warning('Using the published ImageNet mean and PCA constants, not statistics '
                  'of the training set (sections 2, 4.1): prepare the data (python -m '
                  'alexnet_jax.prepare computes them) or set config.input.stats_path.')
  return published(s)


def computed_source(dataset: str, split: str) -> str:
  """Stats.source of statistics computed from a dataset's training images: the
  source actually read (dataset: data_sources.describe's words), e.g.
  'computed: folder /data/pets, split train'."""
  return f'computed: {dataset}, split {split}'


def check(s: Settings) -> None:
  """The mean and crop settings of config.input agree."""
  if s.mean not in MEAN_MODES:
    raise ValueError(f'config.input.mean={s.mean!r}; expected one of {MEAN_MODES}.')
  if s.mean == 'image' and (s.random_resized_crop or not s.central_crop):
    raise ValueError('config.input.mean="image" needs central_crop=True and '
                     'random_resized_crop=False (the mean image is of the central '
                     'R x R crops); use mean="channel" with those.')


PREPARED = 'stats.npz'  # beside a prepared dataset's manifest.json (alexnet_jax.prepare)


def prepared_source(num_images: int, split: str) -> str:
  """Stats.source of the statistics prepare computes."""
  return f'computed over {num_images:,} training images (split {split}) by prepare'


def cache_name(split: str, s: Settings) -> str:
  """The file a folder (or older prepared) source's statistics are cached in."""
  return (f'alexnet_jax_stats-{split}-{s.resize_size}'
          f'{"-antialias" if s.antialias else ""}.npz')


def cached(s: Settings, dataset: 'data_sources.Dataset',
           images: Callable[[], Iterable[np.ndarray]],
           cache_dir: Optional[str] = None) -> Stats:
  """Statistics of all the training images, computed once and cached.

  In the data's directory (config.dataset.folder or prepared_dir), else in
  `cache_dir` (the run's workdir) when that is read-only. A cache is reused
  while the source, split, its number of images, R and antialias are those
  it was computed for (its `key`); delete it to recompute.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from alexnet_jax import data_sources  # pylint: disable=g-import-not-at-top,redefined-outer-name
  source = data_sources.for_dataset(dataset, s.resize_size, s.antialias)
  split = source.train_split
  size = source.split(split).size
  what = f'{data_sources.describe(dataset)}, split {split}'
  key = f'{what}, {size} images, {s.resize_size}x{s.resize_size}, antialias={s.antialias}'
  root = dataset.folder if data_sources.source_name(dataset) == 'folder' else dataset.prepared_dir
  paths = [os.path.join(d, cache_name(split, s)) for d in (root, cache_dir) if d]
  for path in paths:
    if tf.io.gfile.exists(path):
      d = _read(path)
      if str(d.get('key')) == key:
        return _stats_of(d, f'{d["source"]}; reused from {path}')
      logging.warning('%s holds statistics of %s, not of %s: computing them again.',
                      path, d.get('key'), key)
  logging.info('Computing the mean image and RGB PCA over all %d training images '
               'of %s (once; cached beside the data).', size, what)
  meter = progress.Meter('stats', size, 'images')
  stats = compute(meter.iterate(images()))
  stats = dataclasses.replace(
      stats, source=f'computed over {stats.num_images:,} training images of {what}')
  for path in paths:
    try:
      tf.io.gfile.makedirs(os.path.dirname(path))  # the workdir may not exist yet
      save(stats, path, key=key)
    except (OSError, tf.errors.OpError) as e:  # e.g. a read-only data directory
      logging.warning('Could not cache the statistics in %s (%s).', path, e)
      continue
    return dataclasses.replace(stats, source=f'{stats.source}; saved to {path}')
  return stats


def for_dataset(s: Settings, dataset: 'data_sources.Dataset',
                images: Callable[[], Iterable[np.ndarray]],
                cache_dir: Optional[str] = None) -> Stats:
  """The statistics a run on `dataset` uses (sections 2, 4.1), those of its
  whole training split:

    s.stats_path   that file (an explicit override);
    digits         computed from `images` (() -> batches, e.g.
                   input_pipeline.stats_images of the run's Input) in memory;
    prepared       those prepare computed (DIR/stats.npz; else as a folder's);
    folder         computed from `images` once, then reused (`cached`);
    tfds           the published ImageNet constants (a warning says so).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from alexnet_jax import data_sources  # pylint: disable=g-import-not-at-top,redefined-outer-name
  name = data_sources.source_name(dataset)
  if s.stats_path or name == 'tfds':
    return for_settings(s)
  if name == 'digits':
    return for_settings(s, images, computed_source(data_sources.describe(dataset),
                                                   dataset.train_split))
  if name == 'prepared':
    path = os.path.join(dataset.prepared_dir, PREPARED)
    if tf.io.gfile.exists(path):
      return _checked(load(path), s, path)
    logging.warning('%s has no %s (prepared before prepare computed statistics): '
                    'computing them from its training images.', dataset.prepared_dir,
                    PREPARED)
  return cached(s, dataset, images, cache_dir)


def for_run(s: Settings, dataset: 'data_sources.Dataset',
            images: Callable[[], Iterable[np.ndarray]],
            cache_dir: Optional[str] = None) -> 'augment.DeviceStats':
  """The run's statistics for the device (`for_device` of `for_dataset`);
  `images` are read only where computed ones are asked for. cache_dir: where
  a folder source's statistics are cached if its directory is read-only."""
  return for_device(s, lambda: for_dataset(s, dataset, images, cache_dir))


def for_device(s: Settings, stats: Optional[Callable[[], Stats]] = None
               ) -> 'augment.DeviceStats':
  """What the device's augmentation needs (alexnet_jax.augment.DeviceStats), resolved once per run.

  Loads or computes statistics (stats(), default `for_settings(s)`) only if
  `s` uses them (a mean or PCA lighting), and logs where they came from once.
  """
  from alexnet_jax import augment  # pylint: disable=g-import-not-at-top,redefined-outer-name
  check(s)
  if s.mean == 'none' and s.pca_lighting <= 0:
    return augment.make_stats()
  found = stats() if stats is not None else for_settings(s)
  logging.info('Input statistics: %s', found.source)
  mean = {'image': found.mean_image, 'channel': found.channel_mean.reshape(1, 1, 3),
          'none': None}[s.mean]
  return augment.make_stats(mean, found.eigval, found.eigvec)


# ------------------------------------------------------------------ command
# Flags are defined only when this module is the program, so that importing it
# (train does) does not clash with alexnet_jax.main's --config. The command
# reads images through input_pipeline (one way: the pipeline does not import
# this module).


def define_flags():
  cli.config_flag(None, 'Training config.')
  flags.DEFINE_integer('num_images', 10_000, 'Training images to sample (in '
                       "the pipeline's seeded training order); <= 0: all.")
  flags.DEFINE_string('output', None, 'Where to write the .npz.')
  flags.mark_flags_as_required(['config', 'output'])


def main(argv) -> None:
  del argv
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.experimental.set_visible_devices([], 'GPU')
  from alexnet_jax import data_sources  # pylint: disable=g-import-not-at-top,redefined-outer-name
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  config, output = flags.FLAGS.config, flags.FLAGS.output
  data = input_pipeline.resolve(config)
  n = min(flags.FLAGS.num_images, data.info.num_train) if flags.FLAGS.num_images > 0 else None
  meter = progress.Meter('stats', n or data.info.num_train, 'images')
  dataset = data_sources.Dataset(**config.dataset)
  stats = compute(meter.iterate(input_pipeline.stats_images(data, num_images=n)),
                  source=computed_source(data_sources.describe(dataset),
                                         data.source.train_split))
  save(stats, output)
  logging.info('Wrote %s: %d images, %s; channel mean %s; PCA eigenvalues %s; '
               'eigenvectors (columns)\n%s', output, stats.num_images, stats.source,
               np.round(stats.channel_mean, 2), stats.eigval, stats.eigvec)


if __name__ == '__main__':
  cli.run(main, define_flags, config_default=None)
