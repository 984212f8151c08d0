"""Small archives in the real ILSVRC2012 layout, written from JPEGs made here.

ILSVRC2012_img_train.tar holds one tar per class (n01440764.tar, ...) of
JPEGs named <wnid>_<n>.JPEG; ILSVRC2012_img_val.tar holds
ILSVRC2012_val_<8 digits>.JPEG, whose labels tfds reads from the
validation_labels.txt it ships (sorted file names, one wnid a line).
"""

import io
import os
import tarfile

import numpy as np
from PIL import Image

SYNSETS = ('n01440764', 'n01443537', 'n01484850')  # tench, goldfish, great white shark


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """uint8 (H, W, 3) smooth random colours (JPEG-friendly, not constant)."""
  small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def jpeg_bytes(array: np.ndarray, mode: str = 'RGB', quality: int = 90) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).convert(mode).save(buf, 'JPEG', quality=quality)
  return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_ilsvrc2012(manual_dir: str, *, per_class: int = 4, num_val: int = 6,
                     seed: int = 0) -> None:
  """Writes ILSVRC2012_img_{train,val}.tar into manual_dir."""
  rng = np.random.default_rng(seed)
  os.makedirs(manual_dir, exist_ok=True)
  sizes = [(300, 260), (240, 320), (375, 500), (200, 180)]
  with tarfile.open(os.path.join(manual_dir, 'ILSVRC2012_img_train.tar'), 'w') as train:
    for wnid in SYNSETS:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as cls:
        for i in range(per_class):
          h, w = sizes[i % len(sizes)]
          mode = 'L' if i == 1 else 'RGB'  # greyscale JPEGs exist in ImageNet
          _add(cls, f'{wnid}_{i}.JPEG', jpeg_bytes(smooth_image(rng, h, w), mode))
      _add(train, f'{wnid}.tar', inner.getvalue())
  with tarfile.open(os.path.join(manual_dir, 'ILSVRC2012_img_val.tar'), 'w') as val:
    for i in range(1, num_val + 1):
      h, w = sizes[i % len(sizes)]
      _add(val, f'ILSVRC2012_val_{i:08d}.JPEG', jpeg_bytes(smooth_image(rng, h, w)))
