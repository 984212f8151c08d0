r"""Training-set statistics: the mean image (section 2) and the RGB PCA (section 4.1).

Section 2: "We did not pre-process the images in any other way, except for
subtracting the mean activity over the training set from each pixel";
section 4.1: "we perform PCA on the set of RGB pixel values throughout the
ImageNet training set".

Command (a sample of the training split, in the pipeline's training order):

  python -m alexnet_jax.stats --config=configs/ilsvrc.py \
      --config.dataset.data_dir=$TFDS_DATA_DIR --num_images=50000 \
      --output=$TFDS_DATA_DIR/alexnet_stats_256.npz

then train with --config.input.stats_path=<that file>. Without a stats file
the published ImageNet constants in config.input.published_* are used (and
logged as such); the digits dataset computes its statistics in memory.

The mean image is of the R x R images (R = config.input.resize_size: shorter
side rescaled to R, central crop) on the 0-255 scale.

PCA convention (one, for computed and published statistics): ``eigval`` are the
eigenvalues (variances) of the 3x3 covariance of RGB pixel values scaled to
[0, 1], pooled over all pixels of all images (between-image variation
included), sorted in decreasing order; ``eigvec`` their eigenvectors as
columns. The device adds 255 * P (alpha * eigval) to 0-255 pixels
(alexnet_jax.augment). The published constants (fb.resnet.torch: 0.2175,
0.0188, 0.0045) are on this scale: the 258 ImageNet JPEGs of the project's
sample give 0.1992, 0.0165, 0.0037 (trace 0.219) measured this way. The
smaller "trace 0.153" one gets from torchvision's per-channel std (0.229,
0.224, 0.225) is of per-image standard deviations, averaged, which leave out
the variation between images' mean colours (the same sample: 0.229, 0.226,
0.227 per image vs 0.270, 0.262, 0.278 pooled).
"""

import dataclasses
import io
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Tuple

from absl import flags
from absl import logging
import numpy as np

from alexnet_jax import augment
from alexnet_jax import cli
from alexnet_jax import progress

if TYPE_CHECKING:  # imported when needed: it imports TensorFlow
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


def compute(images: Iterable[np.ndarray], source: str = 'computed') -> Stats:
  """Mean image and RGB PCA from batches of (n, R, R, 3) float 0-255 images."""
  count, pixels = 0, 0
  image_sum = rgb_sum = outer_sum = None
  for batch in images:
    batch = np.asarray(batch, np.float64)
    if image_sum is None:
      image_sum = np.zeros(batch.shape[1:])
      rgb_sum, outer_sum = np.zeros(3), np.zeros((3, 3))
    image_sum += batch.sum(0)
    rgb = batch.reshape(-1, 3) / 255.0  # [0, 1] pixels
    rgb_sum += rgb.sum(0)
    outer_sum += rgb.T @ rgb
    count += batch.shape[0]
    pixels += rgb.shape[0]
  if not count:
    raise ValueError('No images to compute statistics from.')
  mean_rgb = rgb_sum / pixels
  cov = outer_sum / pixels - np.outer(mean_rgb, mean_rgb)
  eigval, eigvec = np.linalg.eigh(cov)
  order = np.argsort(eigval)[::-1]
  return Stats(mean_image=(image_sum / count).astype(np.float32),
               eigval=eigval[order].astype(np.float32),
               eigvec=eigvec[:, order].astype(np.float32),
               num_images=count, source=source)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What config.input asks of the statistics: `Settings.of(**config.input)`."""
  mean: str                   # MEAN_MODES: subtract the mean image (section 2), per channel, none
  pca_lighting: float         # section 4.1's std of alpha; 0: no PCA needed
  resize_size: int            # R: the mean image is R x R
  stats_path: Optional[str]   # this module's output; None: published constants
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


def save(stats: Stats, path: str) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()  # np.savez seeks; gfile (e.g. GCS) files do not
  np.savez(buf, mean_image=stats.mean_image, eigval=stats.eigval,
           eigvec=stats.eigvec, num_images=stats.num_images, source=stats.source)
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(buf.getvalue())


def load(path: str) -> Stats:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, 'rb') as f:
    d = np.load(io.BytesIO(f.read()))
    return Stats(mean_image=d['mean_image'], eigval=d['eigval'],
                 eigvec=d['eigvec'], num_images=int(d['num_images']),
                 source=f'{d["source"]} ({path})')


def for_settings(s: Settings, images: Optional[Callable[[], Iterable[np.ndarray]]] = None,
                 source: str = 'computed') -> Stats:
  """The statistics `s` asks for: s.stats_path, else computed from `images`, else published.

  images: () -> batches of the training split's R x R images
  (``input_pipeline.stats_images``), given for a small in-memory source
  (digits) whose statistics are computed exactly; the caller passes it, so
  this module does not depend on the pipeline. source: their Stats.source.
  """
  r = s.resize_size
  if s.stats_path:
    stats = load(s.stats_path)
    if stats.mean_image.shape != (r, r, 3):
      raise ValueError(
          f'{s.stats_path} holds a {stats.mean_image.shape} mean image '
          f'but config.input.resize_size={r}; recompute it with alexnet_jax.stats.')
    return stats
  if images is not None:
    return compute(images(), source=source)
  logging.warning('config.input.stats_path is not set: using the published ImageNet '
                  'mean and PCA constants (run `python -m alexnet_jax.stats`).')
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


def for_dataset(s: Settings, dataset: 'data_sources.Dataset',
                images: Callable[[], Iterable[np.ndarray]]) -> Stats:
  """The statistics a run on `dataset` uses (`for_settings`): computed from
  `images` (() -> batches, e.g. input_pipeline.stats_images of the run's Input)
  only for the digits source, held in memory; else s.stats_path or published."""
  if dataset.source != 'digits':
    return for_settings(s)
  from alexnet_jax import data_sources  # pylint: disable=g-import-not-at-top,redefined-outer-name
  return for_settings(s, images, computed_source(data_sources.describe(dataset),
                                                 dataset.train_split))


def for_run(s: Settings, dataset: 'data_sources.Dataset',
            images: Callable[[], Iterable[np.ndarray]]) -> augment.DeviceStats:
  """The run's statistics for the device (`for_device` of `for_dataset`);
  `images` are read only where computed ones are asked for."""
  return for_device(s, lambda: for_dataset(s, dataset, images))


def for_device(s: Settings, stats: Optional[Callable[[], Stats]] = None
               ) -> augment.DeviceStats:
  """What the device's augmentation needs (alexnet_jax.augment.DeviceStats), resolved once per run.

  Loads or computes statistics (stats(), default `for_settings(s)`) only if
  `s` uses them (a mean or PCA lighting), and logs where they came from once.
  """
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
