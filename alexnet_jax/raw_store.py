"""The paper's raw store: R x R x 3 uint8 images in .npy shards (section 2).

cuda-convnet trained from the 256 x 256 images stored as raw pixel batches,
not from JPEGs: no decode at all while training. ``python -m
alexnet_jax.prepare --format=raw`` writes them here, one fixed-size record per
image, so any image is read at random (a memory map; from the page cache when
the store fits in RAM: 196,608 bytes per image, ~252 GB for ILSVRC-2012's
training set).

  DIR/<split>-<i>-of-<n>.npy       uint8 (count, R, R, 3), NumPy format 1.0
  DIR/<split>-<i>-of-<n>.npy.json  {count, bytes, crc32, labels, names, corrupt}
  DIR/manifest.json                each shard's file, num_examples, bytes, crc32

Integrity. The .npy header and the file size are checked when the store is
opened (all shards: a stat each), so a truncated shard is named and refused
before training starts. The pixels' CRC-32 (zlib, ~3.7 GB/s on one core here,
and it releases the GIL) is verified once per process on a shard's first use,
before any of its images is handed out: the first epoch pays one extra read
of the share (which also warms the page cache); a shard that fails is named
and refused, never read as garbage.

The training reader (``Gatherer``): each batch's rows are cut out of the
memory maps (the S x S crop window at its offset) into one uint8 array by a
background thread, with a bounded queue of finished batches.
"""

import json
import os
import queue
import threading
import zlib
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

SUFFIX = '.npy'
_CHUNK = 1 << 24  # bytes per CRC-32 read


class CorruptShardError(ValueError):
  """A raw shard is truncated, has another shape, or fails its checksum."""


def _header(count: int, r: int) -> bytes:
  """The .npy (format 1.0) header of a uint8 (count, r, r, 3) array."""
  import io  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(
      buf, {'descr': '|u1', 'fortran_order': False, 'shape': (count, r, r, 3)})
  return buf.getvalue()


class Writer:
  """Streams R x R x 3 uint8 images into one .npy shard (prepare's raw writer).

  The header is written for the planned count and rewritten for the images
  actually written (those that decoded) on close; the CRC-32 covers the pixels.
  """

  def __init__(self, path: str, planned: int, resize_size: int):
    self._path, self._r = path, resize_size
    self._planned_header = _header(planned, resize_size)
    self._f = open(path, 'wb')
    self._f.write(self._planned_header)
    self.count, self.crc, self.labels, self.names = 0, 0, [], []

  def write(self, pixels: np.ndarray, label: int, name: bytes) -> None:
    if pixels.shape != (self._r, self._r, 3) or pixels.dtype != np.uint8:
      raise ValueError(f'expected uint8 ({self._r}, {self._r}, 3), got '
                       f'{pixels.dtype} {pixels.shape}')
    data = np.ascontiguousarray(pixels).data
    self._f.write(data)
    self.crc = zlib.crc32(data, self.crc)
    self.count += 1
    self.labels.append(int(label))
    self.names.append(name.decode() if isinstance(name, bytes) else str(name))

  def close(self) -> dict:
    """Finishes the file; returns what its sidecar and the manifest record."""
    header = _header(self.count, self._r)
    if len(header) != len(self._planned_header):  # never for these shapes; be safe
      raise AssertionError('npy header length changed')
    self._f.seek(0)
    self._f.write(header)
    self._f.close()
    return {'bytes': os.path.getsize(self._path), 'crc32': self.crc,
            'labels': self.labels, 'names': self.names}


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


class Shard:
  """One shard of an opened store: its path, count, header size and checksum."""

  def __init__(self, path: str, count: int, nbytes: int, crc32: int, resize_size: int):
    self.path, self.count, self.crc32 = path, count, crc32
    self.header = len(_header(count, resize_size))
    self.shape = (count, resize_size, resize_size, 3)
    expected = self.header + count * resize_size * resize_size * 3
    if nbytes != expected:
      raise CorruptShardError(f'{path}: the manifest records {nbytes} bytes, the '
                              f'format {expected}; prepare it again.')
    try:
      actual = os.path.getsize(path)
    except OSError as e:
      raise CorruptShardError(f'raw shard {path} is missing ({e}); prepare again '
                              '(a rerun of the same command rewrites it).') from None
    if actual != expected:
      raise CorruptShardError(
          f'raw shard {path} is {actual} bytes, expected {expected} ({count} images '
          f'of {resize_size}x{resize_size}x3): truncated or overwritten. Delete it '
          'and its .json and rerun the same prepare command to rewrite it.')
    with open(path, 'rb') as f:
      if f.read(self.header) != _header(count, resize_size):
        raise CorruptShardError(f'raw shard {path}: its .npy header is not that of '
                                f'uint8 {self.shape}; prepare it again.')

  def verify(self) -> None:
    """Raises CorruptShardError unless the pixels' CRC-32 is the recorded one."""
    crc = 0
    with open(self.path, 'rb') as f:
      f.seek(self.header)
      while True:
        chunk = f.read(_CHUNK)
        if not chunk:
          break
        crc = zlib.crc32(chunk, crc)
    if crc != self.crc32:
      raise CorruptShardError(
          f'raw shard {self.path} fails its checksum (CRC-32 {crc:#010x}, recorded '
          f'{self.crc32:#010x}): corrupt. Delete it and its .json and rerun the '
          'same prepare command to rewrite it.')

  def open(self) -> np.ndarray:
    # a plain ndarray view of the map: indexing it skips np.memmap's per-slice overhead
    return np.asarray(np.memmap(self.path, np.uint8, "r", offset=self.header,
                                shape=self.shape))


class Store:
  """The images of one split: global index -> (R, R, 3) uint8, random access.

  shards: (path, count, bytes, crc32) in stored order. Opening checks every
  shard's size and header; each shard's checksum is verified on its first use
  (``verify=False`` skips it).
  """

  def __init__(self, shards: Sequence[Tuple[str, int, int, int]], resize_size: int,
               verify: bool = True):
    self.resize_size = resize_size
    self.shards = [Shard(p, n, b, c, resize_size) for p, n, b, c in shards]
    self.starts = np.cumsum([0] + [s.count for s in self.shards])
    self.size = int(self.starts[-1])
    self._verify = verify
    self._maps: List[Optional[np.ndarray]] = [None] * len(self.shards)
    self._lock = threading.Lock()

  def locate(self, index: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Global indices -> (shard, row)."""
    shard = np.searchsorted(self.starts, index, side='right') - 1
    return shard, index - self.starts[shard]

  def ready(self, shards: Sequence[int]) -> None:
    """Verifies (once) and maps the given shards, several at a time."""
    todo = sorted({int(s) for s in shards if self._maps[int(s)] is None})
    if not todo:
      return
    with self._lock:
      todo = [s for s in todo if self._maps[s] is None]  # another thread's since
      if self._verify and len(todo) > 1:
        from concurrent import futures  # pylint: disable=g-import-not-at-top
        with futures.ThreadPoolExecutor(min(len(todo), os.cpu_count() or 1)) as pool:
          list(pool.map(lambda s: self.shards[s].verify(), todo))
      elif self._verify and todo:
        self.shards[todo[0]].verify()
      for s in todo:
        self._maps[s] = self.shards[s].open()

  def image(self, index: int) -> np.ndarray:
    shard, row = self.locate(np.asarray([index]))
    self.ready(shard)
    return np.array(self._maps[int(shard[0])][int(row[0])])  # a copy: TF may keep it

  def crop_into(self, out: np.ndarray, index: np.ndarray, start: np.ndarray) -> None:
    """out[i] = image(index[i])[start[i, 0]:+S, start[i, 1]:+S] (S = out.shape[1])."""
    s = out.shape[1]
    shard, row = self.locate(index)
    self.ready(shard)
    maps = self._maps
    for i, (j, k, (y, x)) in enumerate(zip(shard.tolist(), row.tolist(), start.tolist())):
      out[i] = maps[j][k, y:y + s, x:x + s]


def empty_aligned(shape: Tuple[int, ...], align: int = 64) -> np.ndarray:
  """An uninitialised uint8 array whose data starts on an `align`-byte boundary:
  jax.device_put on the CPU then uses it in place (XLA's alignment) instead of
  copying it (~50 us per 227 patch here, as much as the crop itself)."""
  n = int(np.prod(shape))
  buf = np.empty(n + align, np.uint8)
  start = -buf.ctypes.data % align
  return buf[start:start + n].reshape(shape)


def read_sidecars(paths: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
  """The labels (int32) and names of the shards at `paths` (their .json sidecars)."""
  labels, names = [], []
  for p in paths:
    try:
      with open(p + '.json') as f:
        record = json.load(f)
    except (OSError, ValueError) as e:
      raise CorruptShardError(f'{p}.json (the shard\'s labels and names) is missing '
                              f'or unreadable ({e}); prepare again.') from None
    labels += record['labels']
    names += record['names']
  return np.asarray(labels, np.int32), np.asarray(names, dtype=object)


# --------------------------------------------------------------------------
# The background gather
# --------------------------------------------------------------------------


class Gatherer:
  """Batches made by a background thread, at most `prefetch` ahead.

  make(item) -> batch runs in the thread for each item of `items`; an
  exception there (e.g. a CorruptShardError) is raised by the consumer.
  Iterate it; close() (or garbage collection) stops the thread.
  """

  _END = object()

  def __init__(self, items: Iterator, make: Callable, prefetch: int = 3):
    self._queue = queue.Queue(maxsize=max(1, prefetch))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(items, make), daemon=True,
                                    name='raw_store.Gatherer')
    self._thread.start()

  def _put(self, value) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(value, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def _run(self, items, make):
    try:
      for item in items:
        if not self._put(make(item)):
          return
      self._put(self._END)
    except BaseException as e:  # pylint: disable=broad-except
      self._put(e)

  def __iter__(self):
    try:
      while True:
        value = self._queue.get()
        if value is self._END:
          return
        if isinstance(value, BaseException):
          raise value
        yield value
    finally:
      self.close()

  def close(self) -> None:
    self._stop.set()
