r"""How close a sample's statistics come to the whole training split's (issue 26).

`python -m alexnet_jax.stats` samples 10,000 images by default; prepare and a
folder run compute the mean image (section 2) and the RGB PCA (section 4.1)
over every training image. This measures the sample's error where the whole
set is at hand: the 258 real ImageNet JPEGs of ../shared/data/imagenet-sample
(one image from each of 258 classes), resampled to R x R as the pipeline does
(preprocessing.base_image_uint8). For each n it draws --draws samples of n of
the N images without replacement and compares their statistics with the N's:

  mean image   max and mean absolute difference (0-255 levels, over R x R x 3)
  eigenvalues  |lambda_sample - lambda_all| / lambda_all, each of the three

(each the average over the draws). A mean of n of N images without
replacement has standard error sigma / sqrt(n) * sqrt((N - n) / (N - 1)), so
error * sqrt(n) / sqrt((N - n) / (N - 1)) (the column `c`) is one constant
if the errors follow it; the mean image's error is exactly such a mean, the
eigenvalues' to first order (the delta method). The last rows extrapolate c
(that of the largest n) to n = 10,000 of ILSVRC-2012's N = 1,281,167 training
images, assuming the 258 images spread like ImageNet's (one per class:
between-class variation included, as in a random sample of the training set).

  python benchmarks/stats_sample.py [--images=../shared/data/imagenet-sample] \
      [--resize_size=256] [--draws=100]
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

IMAGENET_TRAIN = 1_281_167


def resampled(folder: str, r: int) -> np.ndarray:
  """(N, R, R, 3) uint8: every JPEG of `folder`, section 2's R x R image."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from alexnet_jax import preprocessing as pp  # pylint: disable=g-import-not-at-top
  files = sorted(f for f in os.listdir(folder) if f.lower().endswith(('.jpeg', '.jpg')))
  return np.stack([pp.base_image_uint8(tf.io.read_file(os.path.join(folder, f)), r).numpy()
                   for f in files])


def per_image_sums(images: np.ndarray):
  """Each image's sums as stats.Accumulator keeps them: x and x x^T of its pixels."""
  x = images.reshape(len(images), -1, 3).astype(np.float64)
  return x.sum(1), np.einsum('npi,npj->nij', x, x)


def eigvals(rgb_sum, outer_sum, pixels):
  mean = rgb_sum / pixels / 255.0
  cov = outer_sum / pixels / 255.0**2 - np.outer(mean, mean)
  return np.sort(np.linalg.eigvalsh(cov))[::-1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', default=os.path.join(ROOT, '..', 'shared', 'data',
                                                        'imagenet-sample'))
  parser.add_argument('--resize_size', type=int, default=256)
  parser.add_argument('--draws', type=int, default=100)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  if not os.path.isdir(args.images):
    sys.exit(f'No folder {args.images} (the project\'s ImageNet sample); pass --images.')
  from alexnet_jax import stats as stats_lib  # pylint: disable=g-import-not-at-top

  images = resampled(args.images, args.resize_size)
  n_all, pixels_per_image = len(images), args.resize_size**2
  full = stats_lib.compute([images])
  rgb, outer = per_image_sums(images)
  lam = eigvals(rgb.sum(0), outer.sum(0), n_all * pixels_per_image)
  np.testing.assert_allclose(lam, full.eigval, rtol=1e-5)  # the same definition
  as_float = images.astype(np.float32)  # sums of <= 258 images: exact integers
  mean_all = as_float.sum(0, dtype=np.float64) / n_all
  print(f'{n_all} images of {args.images}, {args.resize_size}x{args.resize_size}; '
        f'all: eigenvalues {np.array2string(lam, precision=5)}, channel mean '
        f'{np.array2string(full.channel_mean, precision=2)}; {args.draws} draws per n')
  print('| n of N | mean image: max abs diff | mean abs diff | eigenvalue 1, 2, 3: '
        'relative diff | c = error * sqrt(n) / fpc (max, mean, eig 1, 2, 3) |')
  print('|---|---|---|---|---|')
  rng = np.random.default_rng(args.seed)
  for n in (8, 16, 32, 64, 128):
    errs = []
    for _ in range(args.draws):
      idx = rng.choice(n_all, n, replace=False)
      diff = np.abs(as_float[idx].sum(0) / n - mean_all)
      lam_n = eigvals(rgb[idx].sum(0), outer[idx].sum(0), n * pixels_per_image)
      errs.append([diff.max(), diff.mean(), *(np.abs(lam_n - lam) / lam)])
    err = np.mean(errs, 0)
    fpc = np.sqrt((n_all - n) / (n_all - 1))
    c = err * np.sqrt(n) / fpc
    print(f'| {n} of {n_all} | {err[0]:.2f} | {err[1]:.2f} | '
          f'{err[2]:.1%}, {err[3]:.1%}, {err[4]:.1%} | '
          f'{", ".join(f"{v:.3g}" for v in c)} |')
  for n in (10_000, 50_000):
    fpc = np.sqrt((IMAGENET_TRAIN - n) / (IMAGENET_TRAIN - 1))
    e = c / np.sqrt(n) * fpc
    print(f'| {n:,} of {IMAGENET_TRAIN:,} (extrapolated) | {e[0]:.3f} | {e[1]:.3f} | '
          f'{e[2]:.2%}, {e[3]:.2%}, {e[4]:.2%} | |')


if __name__ == '__main__':
  main()
