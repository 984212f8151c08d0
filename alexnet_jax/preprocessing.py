"""The host half of the paper's preprocessing, as TF ops: decode, down-sample, crop.

Section 2: "down-sampled the images to a fixed resolution of 256 x 256"
(shorter side to R = 256, central R x R crop); section 4.1: random S x S
patches (S = 227 or 224) and their reflections for training, ten patches for
testing. Everything here is a pure TensorFlow function of one image, run
inside tf.data by ``alexnet_jax.input_pipeline``, and ends in uint8 pixels;
randomness comes from stateless ops and an explicit seed, so an image's
augmentation is a function of its seed. The per-pixel rest of the recipe
(reflection, mean subtraction, PCA lighting, pixel scale, cutting the ten
test patches) runs on the device: ``alexnet_jax.augment``.

Geometry. We never resize the whole
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
  Originals that are already R x R (the prepared 256 x 256 data) are cropped
  straight out of the JPEG, without resampling. One path either way: the
  shape comes from the JPEG header at run time, or, with ``Recipe.base_jpegs``
  (prepared JPEG data), is the constant (R, R), and then the geometry is
  constant and the choice between cropping and resampling is made when
  tracing (``_cond``): no header read and no branch per image.

Images are either encoded strings (JPEG, or PNG/GIF/BMP, including PNGs named
.JPEG; greyscale and CMYK JPEGs decode to RGB) or uint8 arrays (H, W, C) with
C in {1, 3} (in-memory datasets such as scikit-learn's digits).
"""

from typing import NamedTuple, Tuple

import tensorflow as tf

# libjpeg's fancy chroma upsampling makes the outermost row/column of a cropped
# decode differ from the full decode; a margin of 2 pixels keeps them out.
_JPEG_MARGIN = 2
# Half-width of the triangle (bilinear) kernel in output pixels.
_TRIANGLE_RADIUS = 1.0

class Geometry(NamedTuple):
  """Where the R x R (or R-short-side) base image lies in the resized image.

  All (y, x) int32/float32 pairs (tensors; NumPy arrays for a constant
  shape). ``scale``: resized / original size per axis. ``offset``: top-left
  of the base image in resized coordinates (the central crop's offset).
  ``size``: the base image's size (R, R with a central crop).
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


def _cond(pred, true_fn, false_fn):
  """tf.cond, or, where ``pred`` is known when tracing (a Python bool), just that branch."""
  if isinstance(pred, bool):
    return true_fn() if pred else false_fn()
  return tf.cond(pred, true_fn, false_fn)


def decode(image: tf.Tensor) -> tf.Tensor:
  """The whole image as uint8 (H, W, 3)."""
  if not is_encoded(image):
    return _to_rgb(image)
  return tf.cond(tf.io.is_jpeg(image),
                 lambda: tf.io.decode_jpeg(image, channels=3),
                 lambda: _decode_any(image))


def read_window(image: tf.Tensor, window: tf.Tensor, jpeg: bool = False) -> tf.Tensor:
  """uint8 (h, w, 3) pixels of window = [y0, x0, h, w] (int32, inside the image).

  JPEGs decode only the window (``decode_and_crop_jpeg``); other formats decode
  fully and slice. ``jpeg``: the image is known to be a JPEG (no format check).
  """
  if not is_encoded(image):
    channels = image.shape[-1] if image.shape[-1] is not None else -1
    return _to_rgb(tf.slice(image, [window[0], window[1], 0],
                            [window[2], window[3], channels]))

  def slice_full():
    return tf.slice(_decode_any(image), [window[0], window[1], 0],
                    [window[2], window[3], 3])

  x = _cond(True if jpeg else tf.io.is_jpeg(image),
            lambda: tf.io.decode_and_crop_jpeg(image, window, channels=3),
            slice_full)
  x.set_shape([None, None, 3])
  return x


# --------------------------------------------------------------------------
# Geometry (section 2: shorter side to R, central R x R crop)
# --------------------------------------------------------------------------


def base_geometry(shape: tf.Tensor, resize_size: int,
                  central_crop: bool) -> Geometry:
  """Geometry of "rescale the shorter side to R (and take the central R x R crop)".

  A constant shape (``Recipe.base_jpegs``: (R, R)) gives a constant
  Geometry: the same ops, run once when tracing, as NumPy values, so a
  tf.data map does not run them per image.

  Args:
    shape: (2,) int32 original (height, width).
    resize_size: R, the shorter side after resizing (256 in the paper).
    central_crop: take the central R x R crop (paper) or keep the whole
      resized image.
  """
  known = tf.get_static_value(shape)
  if known is not None:
    with tf.init_scope():  # eagerly, outside the function being traced
      geo = _base_geometry(tf.constant(known, tf.int32), resize_size, central_crop)
      return Geometry(*(x.numpy() for x in geo))
  return _base_geometry(shape, resize_size, central_crop)


def _base_geometry(shape, resize_size, central_crop) -> Geometry:
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


# --------------------------------------------------------------------------
# Training and evaluation examples: uint8 pixels + the device's parameters
# --------------------------------------------------------------------------


class Recipe(NamedTuple):
  """The host's preprocessing settings (config.input), as plain values.

  No defaults: input_pipeline.make_recipe fills every field from the config
  (configs/ilsvrc.py is the one place for the recipe's values).
  """
  resize_size: int
  crop_size: int
  central_crop: bool
  random_crop: bool
  flip: bool
  pca_std: float
  antialias: bool
  fast_train_resample: bool  # rounded_window for bilinear training patches
  random_resized_crop: bool
  rrc_area: Tuple[float, float]
  rrc_aspect: Tuple[float, float]
  # Every original is an R x R JPEG (prepared data, alexnet_jax.prepare): its
  # shape is known in advance (train_example reads no header).
  base_jpegs: bool = False


def to_uint8(x: tf.Tensor) -> tf.Tensor:
  """float 0-255 pixels -> uint8, rounded to nearest (what the device receives)."""
  return tf.saturate_cast(tf.round(x), tf.uint8)


def resize_uint8(window: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """uint8 (h, w, 3) -> uint8 (size, 3), bilinear (half-pixel centres), rounded.

  The same values as ``to_uint8(tf.image.resize(window, size))`` in ~0.6x the
  time on CPU: TF's bilinear kernel is faster on float32 input than on uint8
  (the cast costs less than the difference), and bilinear values, convex
  combinations of 0..255 pixels, need no saturation.
  """
  x = tf.raw_ops.ResizeBilinear(images=tf.cast(window, tf.float32)[None],
                                size=tf.constant(size, tf.int32), half_pixel_centers=True)
  return tf.cast(tf.round(x[0]), tf.uint8)


def _is_base_size(shape: tf.Tensor, resize_size: int):
  """Whether the original is already R x R (a prepared 256 x 256 file): no resampling.

  A Python bool where the shape is known when tracing (a constant), else a tensor.
  """
  known = tf.get_static_value(shape)
  if known is not None:
    return bool((known == resize_size).all())
  return tf.reduce_all(tf.equal(shape, resize_size))


def crop(image: tf.Tensor, shape: tf.Tensor, start: tf.Tensor,
         size: Tuple[int, int], jpeg: bool = False) -> tf.Tensor:
  """uint8 pixels [start, start + size) of the original, not resampled.

  Decodes a window with a _JPEG_MARGIN around it (its outermost rows and
  columns may differ from a full decode) and slices: equals
  ``decode(image)[start:start + size]`` exactly. ``jpeg``: as in read_window.
  """
  lo = tf.maximum(start - _JPEG_MARGIN, 0)
  far = tf.constant([size[0] + _JPEG_MARGIN, size[1] + _JPEG_MARGIN])  # one add per image
  hi = tf.minimum(start + far, shape)
  window = read_window(image, tf.concat([lo, hi - lo], 0), jpeg)
  return tf.slice(window, tf.concat([start - lo, [0]], 0), [size[0], size[1], 3])


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
  window = read_window(image, tf.concat([begin[:2], crop_shape], 0), recipe.base_jpegs)
  return resample(window, crop_shape, scale, tf.zeros([2], tf.int32), (s, s),
                  recipe.antialias)


def patch_window(shape: tf.Tensor, seed: tf.Tensor, recipe: Recipe):
  """Where section 4.1's S x S patch lies: (base_geometry of `shape`, the
  patch's offset in the R x R image, its start in the original's pixels).
  Random (``random_crop``, from `seed`) or the centre."""
  s, r = recipe.crop_size, recipe.resize_size
  geo = base_geometry(shape, r, recipe.central_crop)
  if recipe.random_crop:
    room = geo.size - s + 1  # (2,) number of possible offsets per axis
    offset = tf.random.stateless_uniform(
        [2], seed, minval=0, maxval=tf.int32.max, dtype=tf.int32) % room
  else:
    offset = (geo.size - s) // 2
  return geo, offset, geo.offset + offset


def _paper_crop(image, shape, seed, recipe: Recipe):
  """Section 4.1's S x S patch of the R x R image: (offset in it, uint8 pixels).

  R x R originals are cropped straight out of the file; others resampled,
  bilinear with ``rounded_window`` (``fast_train_resample``), antialiased
  with the exact ``resample``.
  """
  s, r = recipe.crop_size, recipe.resize_size
  geo, offset, start = patch_window(shape, seed, recipe)

  def resampled():
    if recipe.fast_train_resample and not recipe.antialias:
      return resize_uint8(rounded_window(image, shape, geo.scale, start, (s, s)), (s, s))
    return to_uint8(resample(image, shape, geo.scale, start, (s, s), recipe.antialias))

  return offset, _cond(_is_base_size(shape, r),
                       lambda: crop(image, shape, start, (s, s), recipe.base_jpegs),
                       resampled)


def draws(seed: tf.Tensor, recipe: Recipe):
  """The per-image draws of section 4.1 from `seed` (this image in this pass):
  (the crop's seed, reflect?, the PCA-lighting alpha (3,)). One function for
  every reader, so raw and encoded data draw alike (tests/test_raw.py)."""
  seeds = tf.random.experimental.stateless_split(seed, 3)
  flip = (tf.random.stateless_uniform([], seeds[1]) < 0.5 if recipe.flip
          else tf.constant(False))
  alpha = (tf.random.stateless_normal([3], seeds[2], stddev=recipe.pca_std)
           if recipe.pca_std > 0 else tf.zeros([3]))
  return seeds, flip, alpha


def train_example(image: tf.Tensor, seed: tf.Tensor, recipe: Recipe) -> dict:
  """One training example's host half (section 4.1); alexnet_jax.augment finishes it.

  Returns 'image': uint8 (S, S, 3), the random S x S patch of the R x R
  image (``random_crop``; else the centre; ``random_resized_crop``: an
  Inception-style crop instead), NOT reflected; 'offset': int32 (2,) its
  top-left in the R x R image (where the device cuts the mean image);
  'flip': bool (), reflect it (probability 1/2 with ``flip``); 'alpha':
  float32 (3,), the PCA-lighting draw N(0, pca_std^2).
  ``seed``: (2,) int, this image in this pass; every draw is a function of it.
  ``base_jpegs`` (prepared data): every original is an R x R JPEG (the
  manifest's size is checked on loading), so its shape is a constant: no
  header read, the crop chosen when tracing; a smaller file fails to decode
  and is reported as corrupt.
  """
  seeds, flip, alpha = draws(seed, recipe)
  s, r = recipe.crop_size, recipe.resize_size
  shape = tf.constant([r, r], tf.int32) if recipe.base_jpegs else image_shape(image)
  if recipe.random_resized_crop:
    x = to_uint8(_random_resized_crop(image, shape, seeds[0], recipe))
    offset = tf.zeros([2], tf.int32)
  else:
    offset, x = _paper_crop(image, shape, seeds[0], recipe)
  x.set_shape([s, s, 3])
  return {'image': x, 'offset': offset, 'flip': flip, 'alpha': alpha}


def base_image(image: tf.Tensor, resize_size: int, central_crop: bool = True,
               antialias: bool = False):
  """The paper's R x R image (section 2), float32 0-255, and its Geometry.

  Only possible with a static size, i.e. with ``central_crop``; otherwise use
  ``resample`` for windows of it.
  """
  if not central_crop:
    raise ValueError('base_image needs central_crop=True (a static R x R size)')
  shape = image_shape(image)
  geo = base_geometry(shape, resize_size, True)
  return resample(image, shape, geo.scale, geo.offset,
                  (resize_size, resize_size), antialias), geo


def base_image_uint8(image: tf.Tensor, resize_size: int,
                     antialias: bool = False) -> tf.Tensor:
  """The paper's R x R image (section 2), uint8 (R, R, 3); R x R originals as they are."""
  r = resize_size
  x = _cond(_is_base_size(image_shape(image), r), lambda: decode(image),
            lambda: to_uint8(base_image(image, r, True, antialias)[0]))
  x.set_shape([r, r, 3])
  return x


def eval_example(image: tf.Tensor, recipe: Recipe, multi_crop: bool = False) -> tf.Tensor:
  """Evaluation pixels (section 4.1), uint8; alexnet_jax.augment cuts and finishes them.

  Centre crop: the centre S x S patch of the R x R image, (S, S, 3).
  multi_crop: the R x R image (R, R, 3), from which the device cuts the four
  corner and the centre patches (and their reflections); without a central
  crop (no static base size) the five patches, (5, S, S, 3).
  """
  s, r = recipe.crop_size, recipe.resize_size
  if multi_crop and recipe.central_crop:
    return base_image_uint8(image, r, recipe.antialias)
  shape = image_shape(image)
  geo = base_geometry(shape, r, recipe.central_crop)
  if multi_crop:
    h, w = geo.size[0] - s, geo.size[1] - s
    offsets = tf.stack([[0, 0], [0, w], [h, 0], [h, w], [h // 2, w // 2]])
    return tf.stack([to_uint8(resample(image, shape, geo.scale, geo.offset + o, (s, s),
                                       recipe.antialias)) for o in tf.unstack(offsets)])
  start = geo.offset + (geo.size - s) // 2
  x = _cond(_is_base_size(shape, r), lambda: crop(image, shape, start, (s, s)),
            lambda: to_uint8(resample(image, shape, geo.scale, start, (s, s),
                                      recipe.antialias)))
  x.set_shape([s, s, 3])
  return x
