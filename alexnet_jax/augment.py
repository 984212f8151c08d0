"""The per-pixel half of section 2 / 4.1 preprocessing, on the device (pure jnp).

The host (``alexnet_jax.input_pipeline``) decodes and sends uint8 pixels plus
the few numbers each example's recipe needs; these functions finish the
recipe inside the jitted train and eval steps, so the host never touches a
float pixel and the device receives 1 byte per pixel:

  training (section 4.1), per example: the uint8 S x S patch (not yet
    reflected), ``offset`` (2,) its top-left in the R x R image, ``flip`` its
    reflection bit and ``alpha`` (3,) its PCA-lighting draw (already times
    the standard deviation 0.1). Output: (pixel - mean cut at offset, then
    reflected with the patch, + PCA noise) * pixel_scale, one scale or one
    per RGB channel (``pixel_scale_of``).
  evaluation (section 4.1, "ten 224 x 224 patches"): a uint8 R x R image per
    example, cut here into the four corner and the centre patches and their
    reflections; or, for the centre crop alone, the uint8 centre patch.

Statistics (``DeviceStats`` below: the arrays the device uses, made by
``stats.for_device`` from the computed or published ``stats.Stats``) are
resolved once per run and passed to the jitted steps as arguments.

Pixel scale. Pixels are 0-255. The mean (image or per channel) is on that
scale, as in Caffe. PCA lighting (section 4.1, "add multiples of the found
principal components, with magnitudes proportional to the corresponding
eigenvalues times a random variable drawn from a Gaussian with mean zero and
standard deviation 0.1") uses lambda_i, p_i of the covariance of RGB pixel
values scaled to [0, 1], pooled over all pixels of all images (the convention
of ``alexnet_jax.stats`` and of the published constants in configs/ilsvrc.py),
so on 0-255 pixels every pixel of an image gets

    255 * [p1 p2 p3] [a1 l1, a2 l2, a3 l3]^T.
"""

from typing import NamedTuple, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

# Section 4.1: "the four corner patches and the center patch as well as their
# horizontal reflections"; index i + 5 is the reflection of crop i.
TEN_CROP_ORDER = ('top_left', 'top_right', 'bottom_left', 'bottom_right',
                  'centre')


# config.input.pixel_scale: one factor for all channels, or one per RGB channel
# (torchvision's Normalize: 1 / (std_c * 255)).
PixelScale = Union[float, Tuple[float, float, float]]


class DeviceStats(NamedTuple):
  """Input statistics as device arrays (a pytree, passed to jit).

  mean: float32 (R, R, 3) mean image or (1, 1, 3) per-channel mean, 0-255
    (zeros without mean subtraction). eigval (3,), eigvec (3, 3) (columns):
    PCA of [0, 1] RGB pixels.
  """
  mean: jax.Array
  eigval: jax.Array
  eigvec: jax.Array


def make_stats(mean: np.ndarray = None, eigval: np.ndarray = None,
               eigvec: np.ndarray = None) -> DeviceStats:
  """DeviceStats from NumPy arrays; None: no mean (zeros (1, 1, 3)) / no PCA (zeros)."""
  f32 = lambda x, shape: np.zeros(shape, np.float32) if x is None else np.asarray(x, np.float32)
  return DeviceStats(f32(mean, (1, 1, 3)), f32(eigval, (3,)), f32(eigvec, (3, 3)))


def eval_offsets(base: int, crop: int) -> Tuple[Tuple[int, int], ...]:
  """(5,) static (y, x) offsets of TEN_CROP_ORDER's patches in a base x base image."""
  m, c = base - crop, (base - crop) // 2
  return ((0, 0), (0, m), (m, 0), (m, m), (c, c))


def num_eval_crops(flip: bool) -> int:
  """10 (section 4.1); 5 when training used no reflections, since a network
  never shown mirrored images should not be tested on them."""
  return 10 if flip else 5


def crop_name(ten_crop: bool, flip: bool) -> str:
  """What an evaluation averaged over (section 4.1: ten patches with reflections),
  as the training run's evaluation lines and the tools name it."""
  if not ten_crop:
    return 'centre crop'
  return '10-crop' if flip else '5-crop (no reflections)'


def _mean_at(mean: jax.Array, offset: jax.Array, size: int) -> jax.Array:
  """mean (R, R, 3) cut at offset (2,) int -> (size, size, 3); (1, 1, 3) as is."""
  if mean.shape[:2] == (1, 1):
    return mean
  return jax.lax.dynamic_slice(mean, (offset[0], offset[1], 0), (size, size, 3))


def pixel_scale_of(value) -> PixelScale:
  """config.input.pixel_scale (a number, or 3 numbers: R, G, B) as a static,
  hashable jit argument: a float or a 3-tuple of floats."""
  if isinstance(value, (tuple, list)):
    if len(value) != 3:
      raise ValueError(f'pixel_scale must be a number or 3 numbers (R, G, B), got {value!r}.')
    return tuple(float(v) for v in value)
  return float(value)


def scale_pixels(x: jax.Array, pixel_scale: PixelScale) -> jax.Array:
  """x (..., 3) * pixel_scale: a float, or (R, G, B) broadcast over the last axis."""
  if isinstance(pixel_scale, (tuple, list)):
    return x * jnp.asarray(pixel_scale, x.dtype)
  return x * pixel_scale if pixel_scale != 1 else x


def pca_noise(alpha: jax.Array, stats: DeviceStats) -> jax.Array:
  """alpha (b, 3) -> (b, 3) RGB offsets 255 * P (alpha * lambda) on 0-255 pixels."""
  return 255.0 * (alpha * stats.eigval[None]) @ stats.eigvec.T


def train_images(batch: dict, stats: DeviceStats, pixel_scale: PixelScale = 1.0) -> jax.Array:
  """Training batch -> float32 (b, S, S, 3) network inputs (section 4.1).

  batch: 'image' uint8 (b, S, S, 3), 'offset' int32 (b, 2), 'flip' bool (b,),
  'alpha' float32 (b, 3).
  """
  x = batch['image'].astype(jnp.float32)                   # (b, S, S, 3)
  s = x.shape[1]
  mean = jax.vmap(lambda o: _mean_at(stats.mean, o, s))(batch['offset'])
  x = x - mean                                             # (b, S, S, 3)
  # The mean is cut where the patch was and reflected with it.
  x = jnp.where(batch['flip'][:, None, None, None], x[:, :, ::-1], x)
  x = x + pca_noise(batch['alpha'], stats)[:, None, None, :]
  return scale_pixels(x, pixel_scale)


def eval_images(images: jax.Array, stats: DeviceStats, crop_size: int,
                num_crops: int = 1, pixel_scale: PixelScale = 1.0) -> jax.Array:
  """Evaluation inputs (section 4.1), float32.

  images: uint8 (b, S, S, 3) centre patches (num_crops 1) -> (b, S, S, 3);
  uint8 (b, R, R, 3) images -> (b, num_crops, S, S, 3) in TEN_CROP_ORDER, then
  the same five reflected (num_crops 10); or uint8 (b, 5, S, S, 3) patches
  already cut (a base image without a static size) -> (b, num_crops, S, S, 3).
  """
  s = crop_size
  x = images.astype(jnp.float32)
  if num_crops == 1:
    r = stats.mean.shape[0]
    c = (r - s) // 2
    x = x - _mean_at(stats.mean, jnp.array([c, c]), s)[None]
  else:
    if x.ndim == 4:  # (b, R, R, 3): mean image of the same size, then cut
      x = x - stats.mean[None]
      x = jnp.stack([x[:, oy:oy + s, ox:ox + s] for oy, ox in
                     eval_offsets(x.shape[1], s)], axis=1)  # (b, 5, S, S, 3)
    else:
      x = x - jnp.stack([_mean_at(stats.mean, jnp.array(o), s) for o in
                         eval_offsets(stats.mean.shape[0], s)])[None]
    if num_crops == 10:
      x = jnp.concatenate([x, x[:, :, :, ::-1]], axis=1)  # (b, 10, S, S, 3)
    elif num_crops != 5:
      raise ValueError(f'num_crops must be 1, 5 or 10, got {num_crops}.')
  return scale_pixels(x, pixel_scale)


def stats_shardings(sharding) -> DeviceStats:
  """The replicated sharding of a DeviceStats, for jit's in_shardings."""
  return DeviceStats(sharding, sharding, sharding)
