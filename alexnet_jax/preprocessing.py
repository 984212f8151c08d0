"""Image preprocessing of section 4.1 (training) and section 6 (testing), as TF ops.

Everything here is a pure TensorFlow function of one image, run inside
tf.data by ``alexnet_jax.input_pipeline``; randomness comes from stateless ops
and an explicit seed, so an image's augmentation is a function of its seed.

Pixel scale. Images are float32 RGB on the 0-255 scale. The mean image (or
per-channel mean) is subtracted on that scale, as in Caffe. PCA lighting uses
the eigenvalues and eigenvectors of the 3x3 covariance of RGB pixels scaled to
[0, 1] (the convention of fb.resnet.torch and of the published constants), so
on our 0-255 pixels the noise added to every pixel is

    255 * [p1 p2 p3] [a1 l1, a2 l2, a3 l3]^T,  a_i ~ N(0, std^2).

Geometry. The paper rescales the shorter side to R = 256, takes the central
R x R crop and then an S x S patch (S = 227 or 224). We never resize the whole
image: only the JPEG window a patch depends on is decoded
(``tf.io.decode_and_crop_jpeg``; pixel-identical to decoding everything and
cropping, except in the window's outermost row/column, where libjpeg's chroma
upsampling differs, so windows carry a margin).
  Evaluation and antialiased training patches (``resample``): the window is
  resampled with exactly the scale and sub-pixel translation the full-image
  resize would use (``ScaleAndTranslate``, the kernel behind
  ``tf.image.resize``), with a margin for the kernel's support, so the patch
  equals "decode all, resize, centre-crop, crop" to float rounding
  (tests/test_input_pipeline.py).
  Bilinear training patches (the default, ``rounded_window``): the window is
  rounded to whole original pixels and resized to S x S, which shifts the patch
  by under half an original pixel against the exact grid; that costs nothing
  to a random crop and halves the resampling time, which is most of the
  difference between 1.5x and 2x PyTorch's throughput.

Images are either encoded strings (JPEG, or PNG/GIF/BMP, including PNGs named
.JPEG; greyscale and CMYK JPEGs decode to RGB) or uint8 arrays (H, W, C) with
C in {1, 3} (in-memory datasets such as scikit-learn's digits).
"""

from typing import NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf

# libjpeg's fancy chroma upsampling makes the outermost row/column of a cropped
# decode differ from the full decode; a margin of 2 pixels keeps them out.
_JPEG_MARGIN = 2
# Half-width of the triangle (bilinear) kernel in output pixels.
_TRIANGLE_RADIUS = 1.0

# Section 6: "the four corner patches and the center patch as well as their
# horizontal reflections"; index i + 5 is the reflection of crop i.
TEN_CROP_ORDER = ('top_left', 'top_right', 'bottom_left', 'bottom_right',
                  'centre')


class Geometry(NamedTuple):
  """Where the R x R (or R-short-side) base image lies in the resized image.

  All (y, x) int32/float32 pairs. ``scale``: resized / original size per axis.
  ``offset``: top-left of the base image in resized coordinates (the central
  crop's offset). ``size``: the base image's size (R, R with a central crop).
  """
  scale: tf.Tensor
  offset: tf.Tensor
  size: tf.Tensor


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


def is_encoded(image: tf.Tensor) -> bool:
  return image.dtype == tf.string


def image_shape(image: tf.Tensor) -> tf.Tensor:
  """(2,) int32 height and width of an encoded or decoded image."""
  if not is_encoded(image):
    return tf.shape(image)[:2]
  return tf.cond(
      tf.io.is_jpeg(image),
      lambda: tf.io.extract_jpeg_shape(image)[:2],
      lambda: tf.shape(_decode_any(image))[:2])


def _decode_any(image: tf.Tensor) -> tf.Tensor:
  """Any format tf.io.decode_image reads -> uint8 (H, W, 3)."""
  x = tf.io.decode_image(image, channels=3, expand_animations=False)
  x.set_shape([None, None, 3])
  return x


def _to_rgb(x: tf.Tensor) -> tf.Tensor:
  """uint8 (H, W, 1 or 3) -> (H, W, 3)."""
  if x.shape[-1] == 3:
    return x
  if x.shape[-1] == 1:
    return tf.tile(x, [1, 1, 3])
  x = tf.cond(tf.shape(x)[-1] == 1, lambda: tf.tile(x, [1, 1, 3]), lambda: x)
  x.set_shape([None, None, 3])
  return x


def decode(image: tf.Tensor) -> tf.Tensor:
  """The whole image as uint8 (H, W, 3)."""
  if not is_encoded(image):
    return _to_rgb(image)
  return tf.cond(tf.io.is_jpeg(image),
                 lambda: tf.io.decode_jpeg(image, channels=3),
                 lambda: _decode_any(image))


def read_window(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
  """uint8 (h, w, 3) pixels of window = [y0, x0, h, w] (int32, inside the image).

  JPEGs decode only the window (``decode_and_crop_jpeg``); other formats decode
  fully and slice.
  """
  if not is_encoded(image):
    channels = image.shape[-1] if image.shape[-1] is not None else -1
    return _to_rgb(tf.slice(image, [window[0], window[1], 0],
                            [window[2], window[3], channels]))

  def slice_full():
    return tf.slice(_decode_any(image), [window[0], window[1], 0],
                    [window[2], window[3], 3])

  x = tf.cond(tf.io.is_jpeg(image),
              lambda: tf.io.decode_and_crop_jpeg(image, window, channels=3),
              slice_full)
  x.set_shape([None, None, 3])
  return x


# --------------------------------------------------------------------------
# Geometry (section 4.1: shorter side to R, central R x R crop)
# --------------------------------------------------------------------------


def base_geometry(shape: tf.Tensor, resize_size: int,
                  central_crop: bool) -> Geometry:
  """Geometry of "rescale the shorter side to R (and take the central R x R crop)".

  Args:
    shape: (2,) int32 original (height, width).
    resize_size: R, the shorter side after resizing (256 in the paper).
    central_crop: take the central R x R crop (paper) or keep the whole
      resized image.
  """
  shape_f = tf.cast(shape, tf.float32)
  resized = tf.cast(tf.round(shape_f * resize_size / tf.reduce_min(shape_f)),
                    tf.int32)  # (2,), the shorter side exactly R
  scale = tf.cast(resized, tf.float32) / shape_f
  if central_crop:
    return Geometry(scale, (resized - resize_size) // 2,
                    tf.constant([resize_size, resize_size], tf.int32))
  return Geometry(scale, tf.zeros([2], tf.int32), resized)


def resample(image: tf.Tensor, shape: tf.Tensor, scale: tf.Tensor,
             start: tf.Tensor, size: Tuple[int, int],
             antialias: bool = False) -> tf.Tensor:
  """Pixels [start, start + size) of the image resized by ``scale``; float32 (h, w, 3).

  Equals ``tf.image.resize(decode(image), round(shape * scale), 'bilinear',
  antialias)[start:start + size]`` to float rounding, but decodes and
  resamples only the window of the original that those pixels depend on.

  Args:
    image: encoded string or uint8 (H, W, C) array.
    shape: (2,) int32 original (H, W).
    scale: (2,) float32 resized / original size.
    start: (2,) int32 top-left output pixel in resized coordinates.
    size: static (h, w) of the output.
    antialias: False: bilinear sampling of the original (OpenCV's and Caffe's
      INTER_LINEAR); True: antialiased bilinear, whose kernel widens by
      1 / scale when downsampling (PIL's and torchvision's), about twice as
      slow on CPU.
  """
  size_f = tf.constant(size, tf.float32)
  start_f = tf.cast(start, tf.float32)
  # Half-width of the kernel in original pixels.
  support = _TRIANGLE_RADIUS * (tf.maximum(1.0 / scale, 1.0) if antialias
                                else tf.ones([2]))
  # Output pixel j samples the original at (start + j + 0.5) / scale - 0.5.
  first = (start_f + 0.5) / scale - 0.5
  last = (start_f + size_f - 0.5) / scale - 0.5
  lo = tf.math.floor(first - support) - _JPEG_MARGIN
  hi = tf.math.ceil(last + support) + _JPEG_MARGIN
  lo = tf.maximum(tf.cast(lo, tf.int32), 0)
  hi = tf.minimum(tf.cast(hi, tf.int32) + 1, shape)
  window = read_window(image, tf.concat([lo, hi - lo], 0))
  # ScaleAndTranslate's triangle kernel is bilinear interpolation (antialias
  # False; sample points clamped to the image, as tf.image.resize does) or
  # its antialiased form (True).
  out = tf.raw_ops.ScaleAndTranslate(
      images=window[None],
      size=tf.constant(size, tf.int32),
      scale=scale,
      translation=tf.cast(lo, tf.float32) * scale - start_f,
      kernel_type='triangle', antialias=antialias)
  return tf.reshape(out, [size[0], size[1], 3])


def rounded_window(image: tf.Tensor, shape: tf.Tensor, scale: tf.Tensor,
                   start: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """uint8 window of the original under pixels [start, start + size) of the resized image.

  The window is rounded to whole original pixels; resizing it (bilinear) to
  ``size`` is the fast approximation of ``resample(antialias=False)`` used for
  training: the patch moves by at most half an original pixel and its scale
  by at most one original pixel over the patch, against the exact grid. About
  2x cheaper than ScaleAndTranslate on CPU, which matters at training
  throughput and not at all to a random crop.
  """
  start_f = tf.cast(start, tf.float32)
  lo = tf.cast(tf.round(start_f / scale), tf.int32)
  hi = tf.cast(tf.round((start_f + tf.constant(size, tf.float32)) / scale), tf.int32)
  lo = tf.clip_by_value(lo, 0, shape - 1)
  hi = tf.clip_by_value(hi, lo + 1, shape)
  return read_window(image, tf.concat([lo, hi - lo], 0))


def base_image(image: tf.Tensor, resize_size: int, central_crop: bool = True,
               antialias: bool = False):
  """The paper's R x R image (section 4.1), float32 0-255, and its Geometry.

  Only possible with a static size, i.e. with ``central_crop``; otherwise use
  ``resample`` for windows of it.
  """
  if not central_crop:
    raise ValueError('base_image needs central_crop=True (a static R x R size)')
  shape = image_shape(image)
  geo = base_geometry(shape, resize_size, True)
  return resample(image, shape, geo.scale, geo.offset,
                  (resize_size, resize_size), antialias), geo


# --------------------------------------------------------------------------
# Mean subtraction, flips, PCA lighting (section 4.1)
# --------------------------------------------------------------------------


def subtract_channels(x: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
  """x (h, w, 3) minus a per-channel v ((3,) or (1, 1, 3)); static h, w.

  The same numbers as ``x - v``, computed as (h, 3w) minus a tiled (1, 3w)
  row: TF's broadcast over a last axis of 3 is not vectorized and costs
  about 0.3 ms on a 227 x 227 patch (a seventh of a training image's
  preprocessing), the row broadcast a fifth of that.
  """
  h, w = x.shape[0], x.shape[1]
  if h is None or w is None:
    return x - tf.reshape(v, [3])
  row = tf.tile(tf.reshape(v, [3]), [w])
  return tf.reshape(tf.reshape(x, [h, w * 3]) - row[None], [h, w, 3])


def subtract_mean(x: tf.Tensor, mean: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
  """x (h, w, 3) minus the mean; a (R, R, 3) mean image is cut at ``offset``.

  ``mean`` is the mean image (R, R, 3), or a per-channel mean (1, 1, 3).
  """
  if mean.shape[0] == 1 and mean.shape[1] == 1:
    return subtract_channels(x, mean)
  h, w = x.shape[0], x.shape[1]
  return x - tf.slice(mean, [offset[0], offset[1], 0], [h, w, 3])


def pca_lighting(seed: tf.Tensor, std: float, eigval: tf.Tensor,
                 eigvec: tf.Tensor, pixel_max: float = 255.0) -> tf.Tensor:
  """(3,) RGB offset 255 * P (alpha * lambda), alpha ~ N(0, std^2) (section 4.1).

  Args:
    seed: (2,) int seed of this image in this pass.
    std: the standard deviation of alpha (0.1 in the paper).
    eigval: (3,) eigenvalues of the covariance of [0, 1]-scaled RGB pixels.
    eigvec: (3, 3) its eigenvectors as columns.
    pixel_max: the pixel scale the noise is added on (255: our images).
  """
  alpha = tf.random.stateless_normal([3], seed, stddev=std)
  # P (alpha * lambda) as a broadcast sum: a 3x3 matmul op costs more than the image.
  return pixel_max * tf.reduce_sum(eigvec * (alpha * eigval)[None, :], axis=1)


# --------------------------------------------------------------------------
# Training and evaluation images
# --------------------------------------------------------------------------


class Recipe(NamedTuple):
  """The preprocessing settings (config.input plus statistics), as plain values.

  mean: float32 (R, R, 3) mean image or (1, 1, 3) per-channel mean (0-255).
  eigval, eigvec: (3,), (3, 3) PCA of [0, 1]-scaled RGB pixels.
  """
  resize_size: int = 256
  crop_size: int = 227
  central_crop: bool = True
  random_crop: bool = True
  flip: bool = True
  pca_std: float = 0.1
  antialias: bool = False
  fast_train_resample: bool = True  # rounded_window for bilinear training patches
  pixel_scale: float = 1.0  # network input = (pixel - mean) * pixel_scale
  random_resized_crop: bool = False
  rrc_area: Tuple[float, float] = (0.08, 1.0)
  rrc_aspect: Tuple[float, float] = (3 / 4, 4 / 3)
  mean: Optional[np.ndarray] = None
  eigval: Optional[np.ndarray] = None
  eigvec: Optional[np.ndarray] = None


def _mean_tensor(recipe: Recipe) -> tf.Tensor:
  if recipe.mean is None:
    return tf.zeros([1, 1, 3], tf.float32)
  return tf.constant(recipe.mean, tf.float32)


def _random_resized_crop(image, shape, seed, recipe: Recipe) -> tf.Tensor:
  """Inception-style crop (Szegedy et al. 2015; not the paper's), float32 (S, S, 3)."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.concat([shape, [3]], 0),
      bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=seed,
      area_range=recipe.rrc_area,
      aspect_ratio_range=recipe.rrc_aspect,
      min_object_covered=0.0,
      max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  s = recipe.crop_size
  # Resample the window to S x S (antialiased bilinear), decoding only it.
  crop_shape = size[:2]
  scale = tf.constant([s, s], tf.float32) / tf.cast(crop_shape, tf.float32)
  window = read_window(image, tf.concat([begin[:2], crop_shape], 0))
  return resample(window, crop_shape, scale, tf.zeros([2], tf.int32), (s, s),
                  recipe.antialias)


def _mean_cut(recipe: Recipe, offset: tf.Tensor, flip, base_width) -> tf.Tensor:
  """The mean under an S x S patch at `offset`, reflected with the patch if `flip`."""
  mean = _mean_tensor(recipe)
  if mean.shape[0] == 1:  # per-channel (or no) mean: nothing to cut or reflect
    return mean
  s = recipe.crop_size
  cut = lambda m, o: tf.slice(m, [o[0], o[1], 0], [s, s, 3])
  if flip is None:
    return cut(mean, offset)
  # The reflection of the cut at x is the cut of the reflected mean at W - S - x.
  mirrored = tf.constant(recipe.mean[:, ::-1], tf.float32)
  return tf.cond(flip, lambda: cut(mirrored, tf.stack([offset[0], base_width - s - offset[1]])),
                 lambda: cut(mean, offset))


def train_image(image: tf.Tensor, seed: tf.Tensor, recipe: Recipe) -> tf.Tensor:
  """One training patch, float32 (S, S, 3): (pixels - mean + PCA noise) * pixel_scale.

  A random S x S patch of the R x R image (``random_crop``; else the centre),
  reflected with probability 1/2 (``flip``), plus PCA lighting noise
  (``pca_std`` > 0), section 4.1. ``seed``: (2,) int, this image in this pass.
  Bilinear patches use ``rounded_window`` (``fast_train_resample``; the
  window is reflected before resizing, which commutes with it), antialiased
  ones the exact ``resample``; evaluation is always exact.
  """
  seeds = tf.random.experimental.stateless_split(seed, 3)
  s = recipe.crop_size
  shape = image_shape(image)
  flip = tf.random.stateless_uniform([], seeds[1]) < 0.5 if recipe.flip else None
  reflect = lambda x: tf.cond(flip, lambda: tf.reverse(x, axis=[1]), lambda: x)
  if recipe.random_resized_crop:
    x = _random_resized_crop(image, shape, seeds[0], recipe)
    x = x if flip is None else reflect(x)
    shift = _mean_tensor(recipe)
    if shift.shape[0] != 1:
      raise ValueError('random_resized_crop takes a per-channel mean, not a mean image.')
  else:
    geo = base_geometry(shape, recipe.resize_size, recipe.central_crop)
    if recipe.random_crop:
      room = geo.size - s + 1  # (2,) number of possible offsets per axis
      offset = tf.random.stateless_uniform(
          [2], seeds[0], minval=0, maxval=tf.int32.max, dtype=tf.int32) % room
    else:
      offset = (geo.size - s) // 2
    start = geo.offset + offset
    if recipe.fast_train_resample and not recipe.antialias:
      window = rounded_window(image, shape, geo.scale, start, (s, s))
      x = tf.image.resize(window if flip is None else reflect(window), (s, s))
    else:
      x = resample(image, shape, geo.scale, start, (s, s), recipe.antialias)
      x = x if flip is None else reflect(x)
    shift = _mean_cut(recipe, offset, flip, geo.size[1])
  if recipe.pca_std > 0:
    noise = pca_lighting(seeds[2], recipe.pca_std,
                         tf.constant(recipe.eigval, tf.float32),
                         tf.constant(recipe.eigvec, tf.float32))
    # shift - noise; a (1, 1, 3) shift stays small, an (S, S, 3) one takes
    # the vectorized row broadcast.
    shift = (shift - noise if shift.shape[0] == 1
             else subtract_channels(shift, noise))
  x = subtract_channels(x, shift) if shift.shape[0] == 1 else x - shift
  return x * recipe.pixel_scale if recipe.pixel_scale != 1 else x


def ten_crop_offsets(base_size, crop_size: int):
  """(5, 2) offsets of TEN_CROP_ORDER's crops in a base image of (H, W)."""
  h, w = base_size[0] - crop_size, base_size[1] - crop_size
  return tf.stack([[0, 0], [0, w], [h, 0], [h, w], [h // 2, w // 2]])


def num_eval_crops(recipe: Recipe) -> int:
  """10 (section 6); 5 when training used no reflections (recipe.flip False),
  since a network never shown mirrored images should not be tested on them."""
  return 10 if recipe.flip else 5


def eval_image(image: tf.Tensor, recipe: Recipe, ten_crop: bool = False) -> tf.Tensor:
  """Test patches (section 6), float32, mean subtracted.

  Single crop: the centre S x S patch of the R x R image, (S, S, 3).
  ten_crop: the four corner and the centre patches and their reflections,
  (10, S, S, 3) in TEN_CROP_ORDER, then the same five reflected; without
  reflections when the recipe trains without flips ((5, S, S, 3)).
  """
  s = recipe.crop_size
  shape = image_shape(image)
  geo = base_geometry(shape, recipe.resize_size, recipe.central_crop)
  mean = _mean_tensor(recipe)
  if not ten_crop:
    offset = (geo.size - s) // 2
    x = resample(image, shape, geo.scale, geo.offset + offset, (s, s),
                 recipe.antialias)
    x = subtract_mean(x, mean, offset)
    return x * recipe.pixel_scale if recipe.pixel_scale != 1 else x
  offsets = ten_crop_offsets(geo.size, s)
  if recipe.central_crop:
    r = recipe.resize_size
    base = resample(image, shape, geo.scale, geo.offset, (r, r),
                    recipe.antialias)
    crops = [subtract_mean(tf.slice(base, [o[0], o[1], 0], [s, s, 3]), mean, o)
             for o in tf.unstack(offsets)]
  else:  # the base image has no static size: resample each crop
    crops = [subtract_mean(resample(image, shape, geo.scale, geo.offset + o,
                                    (s, s), recipe.antialias), mean, o)
             for o in tf.unstack(offsets)]
  x = tf.stack(crops)  # (5, S, S, 3)
  if recipe.flip:
    x = tf.concat([x, tf.reverse(x, axis=[2])], 0)  # (10, S, S, 3)
  return x * recipe.pixel_scale if recipe.pixel_scale != 1 else x
