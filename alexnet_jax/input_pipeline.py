"""Input pipeline (section 4.1 preprocessing and augmentation, section 6 eval).

INTERFACE (used by train.py; keep it):

  dataset_info(config) -> DatasetInfo(num_train, num_eval, num_classes)
      Raises DatasetNotFoundError naming the exact preparation steps.
  train_iterator(config, *, batch_size, start_step=0, process_index=0, process_count=1)
      Infinite iterator of {'image': float32 (b, S, S, 3), 'label': int32 (b,)},
      b = per-process batch, S = config.model.input_size. Batch k is a
      deterministic function of (config.seed, k, process_index), so a run
      restarted with start_step=k continues the same stream.
  eval_iterator(config, *, batch_size, ten_crop=False, process_index=0, process_count=1)
      One pass over this process's share of the eval split; every process
      yields the same number of batches. {'image': (b, S, S, 3) or (b, 10, S, S, 3),
      'label': (b,), 'mask': bool (b,)}; padded examples have mask False.

(Minimal digits-only implementation; the tf.data pipeline replaces it.)
"""

import math
from typing import Iterator, NamedTuple

import numpy as np


class DatasetNotFoundError(FileNotFoundError):
  """The configured dataset is not prepared; the message says how to prepare it."""


class DatasetInfo(NamedTuple):
  num_train: int
  num_eval: int
  num_classes: int


def _digits(split: str):
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  d = datasets.load_digits()
  images = (d.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
  labels = d.target.astype(np.int32)
  # Fixed split: the last 360 images (20%) are the evaluation set.
  if split == 'train':
    return images[:-360], labels[:-360]
  return images[-360:], labels[-360:]


def dataset_info(config) -> DatasetInfo:
  if config.dataset.source != 'digits':
    raise DatasetNotFoundError(f'source {config.dataset.source!r} not implemented yet')
  return DatasetInfo(len(_digits('train')[1]), len(_digits('eval')[1]), 10)


def _prep(images: np.ndarray, size: int) -> np.ndarray:
  """(N, 8, 8) uint8 -> (N, size, size, 3) float32, nearest upscaling, per-channel mean out."""
  idx = (np.arange(size) * images.shape[1]) // size
  x = images[:, idx][:, :, idx].astype(np.float32)
  x = np.repeat(x[..., None], 3, axis=-1)
  return x - x.mean()


def train_iterator(config, *, batch_size: int, start_step: int = 0,
                   process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  images, labels = _digits('train')
  n = len(labels)
  size = config.model.input_size
  global_batch = batch_size * process_count
  steps_per_epoch = n // global_batch
  step = start_step
  while True:
    epoch, k = divmod(step, steps_per_epoch)
    perm = np.random.default_rng([config.seed, epoch]).permutation(n)
    lo = k * global_batch + process_index * batch_size
    idx = perm[lo:lo + batch_size]
    yield {'image': _prep(images[idx], size), 'label': labels[idx]}
    step += 1


def eval_iterator(config, *, batch_size: int, ten_crop: bool = False,
                  process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  images, labels = _digits('eval')
  shards = np.array_split(np.arange(len(labels)), process_count)
  mine = shards[process_index]
  num_batches = math.ceil(max(len(s) for s in shards) / batch_size)
  size = config.model.input_size
  for b in range(num_batches):
    idx = mine[b * batch_size:(b + 1) * batch_size]
    pad = batch_size - len(idx)
    x = _prep(images[idx], size)
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    if ten_crop:
      x = np.repeat(x[:, None], 10, axis=1)
    yield {'image': x, 'label': np.concatenate([labels[idx], np.zeros(pad, np.int32)]),
           'mask': np.arange(batch_size) < len(idx)}
