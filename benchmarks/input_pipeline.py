r"""Training input pipeline throughput to JAX arrays: raw, prepared JPEG, on the fly, PyTorch.

Both read the same real ImageNet JPEGs (default ../shared/data/imagenet-sample/,
each file repeated --repeat times) on the same CPU cores: every measurement
runs in its own process pinned (sched_setaffinity) to the first N cores, with
N tf.data threads or N DataLoader workers. Pipelines and rounds alternate, and
the table reports the median round.

  ours:  alexnet_jax.input_pipeline.train_iterator on a folder source, the
         paper's recipe as configs/ilsvrc.py sets it: fused decode-and-crop of
         the 227 patch of the shorter-side-256 central crop, random crop, flip,
         PCA lighting, mean image subtracted, batches in NumPy (with
         config.input.antialias False, the default; ours_antialias: True).
  prepared: the same train_iterator and recipe on the same images prepared
         once by `python -m alexnet_jax.prepare` (256x256 central crops, JPEG
         quality --jpeg_quality; the preparation itself is not timed):
         config.dataset.prepared_dir. Its row also has the decode-only rate of
         the same files (TFRecord parse + tf.io.decode_jpeg, nothing else).
  raw:   the same train_iterator and recipe on the same images prepared with
         `prepare --format=raw` (uint8 256x256x3 .npy shards, memory-mapped,
         from the page cache after the warm-up pass): the draws in tf.data,
         the 227 crops copied by NumPy in a background thread.
  raw_tfdata: the same raw store and recipe read the generic way, through
         tf.data: one tf.numpy_function read of the R x R image per example,
         then preprocessing.train_example (the alternative the gather beat).
  decode-only of the originals (in ours' rows): the folder's JPEGs read and
         fully decoded (tf.io.read_file + tf.io.decode_jpeg, the shape kept),
         nothing else: what a pipeline that decodes every pixel cannot beat;
         ours decodes only each patch's window (decode_and_crop_jpeg).
  torch: torch.utils.data.DataLoader over PIL, the transforms torchvision
         applies to PIL images: Resize(256) (PIL antialiased bilinear),
         CenterCrop(256), RandomCrop(227), RandomHorizontalFlip, ToTensor and a
         mean subtraction, collated to float32 batches. torchvision itself is not
         used: from PyPI it brings a CUDA build of torch and does not import with
         the CPU build (MEASURED.md); its PIL transforms are these PIL calls.

Every pipeline's batches end as JAX arrays (jax.device_put, on the default
device: the CPU here), inside the timed loop and its CPU time.

  pip install -r benchmarks/requirements.txt
  python benchmarks/input_pipeline.py --cores=1,2 --output=/tmp/input_pipeline.json
  python benchmarks/input_pipeline.py --cores=1 --batch=128 \
      --pipelines=raw,raw_tfdata,prepared,ours,torch     # the 2026-12-07 table

Rows: key ('raw', 'prepared', 'ours', 'torch', ...), img_per_cpu_second,
stored_bytes_per_image (the format on disk: raw and prepared from their
manifests, the originals' mean file size for ours and torch),
cores_per_gpu_at_100k (100,000 / img_per_cpu_second), for 'raw'
vs_prepared_per_cpu_second (and its single rounds' ratios),
bytes_per_image (the bytes of one training example as the iterator yields it:
the nbytes of every array of a batch / batch size), for 'prepared', 'ours' and
'ours_antialias' decode_only_img_per_cpu_second of their own files and
vs_decode_only_per_cpu_second (with the single rounds' ratios), and ratios to
PyTorch.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(ROOT, '..', 'shared', 'data', 'imagenet-sample')
RESIZE, CROP = 256, 227
MEAN_RGB = (123.68, 116.78, 103.94)


def make_folder(data: str, repeat: int, root: str) -> int:
  """root/train/<wnid>/<k>_<file> symlinks to the sample (wnid = name prefix)."""
  files = sorted(f for f in os.listdir(data) if f.lower().endswith(('.jpeg', '.jpg')))
  for f in files:
    wnid = f.split('_')[0]
    for split in ('train', 'val'):
      os.makedirs(os.path.join(root, split, wnid), exist_ok=True)
    for k in range(repeat):
      os.symlink(os.path.abspath(os.path.join(data, f)),
                 os.path.join(root, 'train', wnid, f'{k}_{f}'))
    os.symlink(os.path.abspath(os.path.join(data, f)), os.path.join(root, 'val', wnid, f))
  return len(files) * repeat


# ------------------------------------------------------------------ workers


def tree_cpu_seconds(pid: int) -> float:
  """User + system CPU seconds of a process, its threads and its children (Linux /proc)."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()
  except FileNotFoundError:
    return 0.0
  return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK') + children_cpu_seconds(pid)


def children_cpu_seconds(pid: int) -> float:
  """CPU seconds of a process's children and their descendants (Linux /proc, in ticks)."""
  total = 0.0
  for task in os.listdir(f'/proc/{pid}/task'):
    try:
      with open(f'/proc/{pid}/task/{task}/children') as f:
        total += sum(tree_cpu_seconds(int(c)) for c in f.read().split())
    except FileNotFoundError:
      pass
  return total


def cpu_seconds() -> float:
  """This process's CPU seconds, all its threads (time.process_time: finer than
  /proc's 10 ms ticks, which a 0.2 s raw measurement would feel), plus its
  children's (DataLoader workers)."""
  return time.process_time() + children_cpu_seconds(os.getpid())


class Timer:
  """Wall seconds and CPU seconds (this process and its children) of a block."""

  def __enter__(self):
    self.wall, self.cpu = time.perf_counter(), cpu_seconds()
    return self

  def __exit__(self, *exc):
    self.wall = time.perf_counter() - self.wall
    self.cpu = cpu_seconds() - self.cpu


def _import_tf():
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.path.insert(0, ROOT)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  return tf


def to_jax(batch):
  """A host batch as JAX arrays on the default device, ready (the timed end point)."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.block_until_ready(jax.device_put(batch))


def run_ours(root: str, threads: int, batch: int, passes: int, antialias: bool,
             prepared: str = '', tfdata: bool = False):
  """prepared: '' (the originals, on the fly), PREPARED or RAW (root/<that>);
  tfdata: RAW read through the generic tf.data path instead of the gather."""
  _import_tf()
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from configs import ilsvrc  # pylint: disable=g-import-not-at-top
  config = ilsvrc.get_config()
  if prepared:
    config.dataset.source = 'prepared'
    config.dataset.prepared_dir = os.path.join(root, prepared)
  else:
    config.dataset.source = 'folder'
    config.dataset.folder = root
    config.dataset.eval_split = 'val'
  config.dataset.threads = threads
  config.input.antialias = antialias
  data = input_pipeline.resolve(config)
  if tfdata:  # the same raw store read through tf.data, one image per map call
    input_pipeline._raw_fast_path = lambda *_: False  # pylint: disable=protected-access
  steps = data.info.num_train // batch
  it = input_pipeline.train_iterator(data, batch_size=batch)
  for _ in range(steps):  # warm-up pass: tracing, file cache, autotuning
    to_jax(next(it))
  with Timer() as t:
    for _ in range(steps * passes):
      b = to_jax(next(it))
  assert b['image'].shape[0] == batch
  return steps * passes * batch, t, sum(v.nbytes for v in b.values()) / batch


def run_decode_only(root: str, threads: int, batch: int, passes: int,
                    originals: bool = False):
  """The prepared files read and decoded (tf.io.decode_jpeg), nothing else; or
  (originals) the folder's original JPEGs read and fully decoded, of which only
  the shape is kept (they differ in size), so nothing but reading and decoding
  is timed."""
  tf = _import_tf()
  from alexnet_jax import data_sources  # pylint: disable=g-import-not-at-top
  if originals:
    train = os.path.join(root, 'train')
    files = sorted(os.path.join(train, c, f) for c in os.listdir(train)
                   for f in os.listdir(os.path.join(train, c)))
    n = len(files)
    ds = tf.data.Dataset.from_tensor_slices(files).shuffle(n, seed=0)
    decode = lambda path: tf.shape(tf.io.decode_jpeg(tf.io.read_file(path), channels=3))
  else:
    directory = os.path.join(root, PREPARED)
    manifest = data_sources.read_manifest(directory)
    files = [os.path.join(directory, s['file']) for s in manifest['splits']['train']['shards']]
    n = manifest['splits']['train']['num_examples']
    ds = tf.data.TFRecordDataset(files)

    def decode(record):
      ex = tf.io.parse_single_example(record, data_sources.PREPARED_FEATURES)
      return tf.io.decode_jpeg(ex['image'], channels=3)

  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch, drop_remainder=True).repeat().with_options(options)
  it = iter(ds)
  steps = n // batch
  for _ in range(steps):  # warm-up pass
    to_jax(next(it).numpy())
  with Timer() as t:
    for _ in range(steps * passes):
      b = to_jax(next(it).numpy())
  return steps * passes * batch, t, b.nbytes / batch


class _PilTrainSet:
  """torchvision's Resize/CenterCrop/RandomCrop/RandomHorizontalFlip/ToTensor on PIL."""

  def __init__(self, paths, labels):
    self.paths, self.labels = paths, labels

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, i):
    import random  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with open(self.paths[i], 'rb') as f:
      img = Image.open(f).convert('RGB')
    w, h = img.size                                    # Resize(256)
    if w <= h:
      size = (RESIZE, int(RESIZE * h / w))
    else:
      size = (int(RESIZE * w / h), RESIZE)
    img = img.resize(size, Image.BILINEAR)
    w, h = img.size                                    # CenterCrop(256)
    top, left = int(round((h - RESIZE) / 2.0)), int(round((w - RESIZE) / 2.0))
    img = img.crop((left, top, left + RESIZE, top + RESIZE))
    top, left = random.randint(0, RESIZE - CROP), random.randint(0, RESIZE - CROP)
    img = img.crop((left, top, left + CROP, top + CROP))  # RandomCrop(227)
    if random.random() < 0.5:                          # RandomHorizontalFlip()
      img = img.transpose(Image.FLIP_LEFT_RIGHT)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div_(255)  # ToTensor
    mean = torch.tensor(MEAN_RGB).view(3, 1, 1) / 255
    return x.sub_(mean), self.labels[i]                # Normalize(mean, std=1)


def run_torch(root: str, workers: int, batch: int, passes: int):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)
  train = os.path.join(root, 'train')
  classes = sorted(os.listdir(train))
  paths, labels = [], []
  for label, c in enumerate(classes):
    for f in sorted(os.listdir(os.path.join(train, c))):
      paths.append(os.path.join(train, c, f))
      labels.append(label)
  loader = torch.utils.data.DataLoader(
      _PilTrainSet(paths, labels), batch_size=batch, shuffle=True, drop_last=True,
      num_workers=workers, persistent_workers=True, prefetch_factor=4)
  for x, y in loader:  # warm-up pass: worker start-up, file cache
    to_jax((x.numpy(), y.numpy()))
  count = 0
  with Timer() as t:
    for _ in range(passes):
      for x, y in loader:
        to_jax((x.numpy(), y.numpy()))
        count += x.shape[0]
  assert x.shape == (batch, 3, CROP, CROP)
  return count, t, (x.numpy().nbytes + 8 * batch) / batch  # float32 image + int64 label


def worker_main(args) -> None:
  os.sched_setaffinity(0, set(range(args.n)))
  if args.pipeline == 'torch':
    count, t, nbytes = run_torch(args.root, args.n, args.batch, args.passes)
  elif args.pipeline in ('decode_only', 'decode_only_originals'):
    count, t, nbytes = run_decode_only(args.root, args.n, args.batch, args.passes,
                                       originals=args.pipeline == 'decode_only_originals')
  else:
    count, t, nbytes = run_ours(args.root, args.n, args.batch, args.passes,
                                antialias=args.pipeline == 'ours_antialias',
                                prepared={'prepared': PREPARED, 'raw': RAW,
                                          'raw_tfdata': RAW}.get(args.pipeline, ''),
                                tfdata=args.pipeline == 'raw_tfdata')
  tick = 1 / os.sysconf('SC_CLK_TCK')  # the resolution of CPU time
  print(json.dumps({'rate': count / t.wall, 'per_cpu_second': count / max(t.cpu, tick),
                    'bytes_per_image': nbytes}))


def prepare_folder(root: str, quality: int, raw: bool = False) -> None:
  """root/PREPARED (root/RAW): root/train prepared by the project's command (not timed)."""
  cmd = [sys.executable, '-m', 'alexnet_jax.prepare', '--config=configs/ilsvrc.py',
         f'--config.dataset.folder={root}',
         f'--output_dir={os.path.join(root, RAW if raw else PREPARED)}', '--splits=train']
  cmd.append('--format=raw' if raw else f'--jpeg_quality={quality}')
  print('$ python ' + ' '.join(cmd[1:]), flush=True)
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  print(out.stdout, end='', flush=True)
  if out.returncode:
    sys.exit(f'prepare failed:\n{out.stderr[-3000:]}')


# ------------------------------------------------------------------- driver

PREPARED = 'prepared'  # root/PREPARED: the prepared copy of root/train
RAW = 'raw'  # root/RAW: the raw (prepare --format=raw) copy of root/train
PIPELINES = {
    'raw': 'NumPy gather on memory-mapped raw 256x256 uint8 (prepare --format=raw)',
    'raw_tfdata': 'the same raw store through tf.data (numpy_function per image + recipe)',
    'ours': 'tf.data (ours): fused decode+crop, flip, PCA, mean image; bilinear',
    'prepared': 'tf.data (ours) on prepared 256x256 JPEGs (alexnet_jax.prepare)',
    'ours_antialias': 'tf.data (ours): same, antialiased bilinear (PIL-like)',
    'torch': 'PyTorch DataLoader + PIL (torchvision PIL transforms), AA bilinear',
}
# The decode-only run of each pipeline's own files: its row's ceiling.
DECODE_ONLY = {'ours': 'decode_only_originals', 'ours_antialias': 'decode_only_originals',
               'prepared': 'decode_only'}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data', default=DEFAULT_DATA)
  parser.add_argument('--repeat', type=int, default=4)
  parser.add_argument('--cores', default='1,2')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--passes', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--pipelines', default='raw,prepared,ours,torch',
                      help=f'Comma-separated, of {",".join(PIPELINES)}.')
  parser.add_argument('--jpeg_quality', type=int, default=90,
                      help='JPEG quality of the prepared images.')
  parser.add_argument('--output', default=None, help='JSON results path')
  # Internal: one measurement in a pinned process.
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--pipeline', help=argparse.SUPPRESS)
  parser.add_argument('--root', help=argparse.SUPPRESS)
  parser.add_argument('--n', type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker_main(args)

  if not os.path.isdir(args.data):
    sys.exit(f'No image folder {args.data} (the benchmark needs real JPEGs: '
             'pass --data=DIR of <wnid>_*.JPEG files).')
  cores = [int(c) for c in args.cores.split(',')]
  available = len(os.sched_getaffinity(0))
  if max(cores) > available:
    sys.exit(f'--cores={args.cores} but only {available} cores are available.')
  pipelines = args.pipelines.split(',')
  unknown = set(pipelines) - set(PIPELINES)
  if unknown:
    sys.exit(f'--pipelines: unknown {sorted(unknown)}; expected some of {",".join(PIPELINES)}.')
  runs = []  # each pipeline right before the decode-only run of its own files
  for p in pipelines:
    runs += [x for x in (p, DECODE_ONLY.get(p)) if x and x not in runs]
  results = {(p, n): [] for p in runs for n in cores}
  prepared_bytes = None
  originals = [os.path.join(args.data, f) for f in os.listdir(args.data)
               if f.lower().endswith(('.jpeg', '.jpg'))]
  stored = {k: sum(map(os.path.getsize, originals)) / len(originals)
            for k in ('ours', 'ours_antialias', 'torch')}  # bytes per stored image
  with tempfile.TemporaryDirectory() as root:
    num = make_folder(args.data, args.repeat, root)
    for key, directory in (('prepared', PREPARED), ('raw', RAW)):
      if key in pipelines or (key == 'raw' and 'raw_tfdata' in pipelines):
        prepare_folder(root, args.jpeg_quality, raw=key == 'raw')
        with open(os.path.join(root, directory, 'manifest.json')) as f:
          stored[key] = json.load(f)['bytes_per_image']
    stored['raw_tfdata'] = stored.get('raw')
    prepared_bytes = stored.get('prepared')
    print(f'{num} images ({args.repeat} x {num // args.repeat} files in {args.data}), '
          f'batch {args.batch}, {args.passes} timed passes, {args.rounds} rounds, '
          f'load average before: {os.getloadavg()[0]:.2f}', flush=True)
    for r in range(args.rounds):
      for n in cores:
        for p in runs:
          cmd = [sys.executable, os.path.abspath(__file__), '--worker', f'--pipeline={p}',
                 f'--root={root}', f'--n={n}', f'--batch={args.batch}',
                 f'--passes={args.passes}']
          out = subprocess.run(cmd, capture_output=True, text=True)
          if out.returncode:
            sys.exit(f'{p} failed:\n{out.stderr[-3000:]}')
          result = json.loads(out.stdout.strip().splitlines()[-1])
          results[(p, n)].append(result)
          print(f'  round {r + 1}: {p:15s} {n} core(s): {result["rate"]:7.1f} img/s, '
                f'{result["per_cpu_second"]:7.1f} img per CPU-second', flush=True)

  rows = []
  for n in cores:
    def median(p, key):
      return statistics.median(x[key] for x in results[(p, n)])
    for p in pipelines:
      row = {'pipeline': PIPELINES[p], 'key': p, 'cores': n, 'threads_or_workers': n,
             'img_per_s': median(p, 'rate'), 'img_per_s_per_core': median(p, 'rate') / n,
             'img_per_cpu_second': median(p, 'per_cpu_second'),
             'bytes_per_image': median(p, 'bytes_per_image'), 'rounds': results[(p, n)]}
      decode_only = DECODE_ONLY.get(p)
      if decode_only:
        row['decode_only_img_per_cpu_second'] = median(decode_only, 'per_cpu_second')
        row['decode_only_rounds'] = results[(decode_only, n)]
        row['vs_decode_only_per_cpu_second'] = (
            row['img_per_cpu_second'] / row['decode_only_img_per_cpu_second'])
        # Ratios of single rounds (the pair ran back to back): the spread under load.
        row['vs_decode_only_rounds'] = [
            a['per_cpu_second'] / b['per_cpu_second']
            for a, b in zip(results[(p, n)], results[(decode_only, n)])]
      row['stored_bytes_per_image'] = stored[p]
      row['cores_per_gpu_at_100k'] = 100_000 / row['img_per_cpu_second']
      if p == 'prepared':
        row['jpeg_quality'] = args.jpeg_quality
      if p == 'raw' and 'prepared' in pipelines:
        row['vs_prepared_per_cpu_second'] = row['img_per_cpu_second'] / median(
            'prepared', 'per_cpu_second')
        row['vs_prepared_rounds'] = [a['per_cpu_second'] / b['per_cpu_second'] for a, b in
                                     zip(results[('raw', n)], results[('prepared', n)])]
      if 'torch' in pipelines:
        row['vs_torch_per_cpu_second'] = row['img_per_cpu_second'] / median(
            'torch', 'per_cpu_second')
        row['vs_torch_wall'] = row['img_per_s'] / median('torch', 'rate')
      rows.append(row)
  lines = ['| pipeline | key | cores | img/s | img/s per core | '
           'img per CPU-second | vs PyTorch (per CPU-s, wall) | bytes/image | '
           'decode-only img per CPU-s (ratio) |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    vs = (f'{r["vs_torch_per_cpu_second"]:.2f}x, {r["vs_torch_wall"]:.2f}x'
          if 'vs_torch_wall' in r else '')
    decode = (f'{r["decode_only_img_per_cpu_second"]:.0f} '
              f'({r["vs_decode_only_per_cpu_second"]:.0%})'
              if 'decode_only_img_per_cpu_second' in r else '')
    lines.append(f'| {r["pipeline"]} | {r["key"]} | {r["cores"]} | '
                 f'{r["img_per_s"]:.0f} | {r["img_per_s_per_core"]:.0f} | '
                 f'{r["img_per_cpu_second"]:.0f} | {vs} | {r["bytes_per_image"]:,.0f} | '
                 f'{decode} |')
  lines += ['', '| format (key) | cores | stored bytes/image | img per CPU-second | '
            'cores per GPU at 100,000 img/s | vs prepared JPEG |', '|---|---|---|---|---|---|']
  for r in rows:
    vs = (f'{r["vs_prepared_per_cpu_second"]:.2f}x' if 'vs_prepared_per_cpu_second' in r
          else '')
    lines.append(f'| {r["key"]} | {r["cores"]} | {r["stored_bytes_per_image"]:,.0f} | '
                 f'{r["img_per_cpu_second"]:,.0f} | {r["cores_per_gpu_at_100k"]:.1f} | {vs} |')
  print('\n'.join(lines))
  print(f'load average after: {os.getloadavg()[0]:.2f}. img/s is wall clock on the '
        'pinned cores (lower when other processes share them); img per CPU-second '
        'counts the CPU time the pipeline itself used (its threads, its workers).')
  if args.output:
    with open(args.output, 'w') as f:
      json.dump({'images': num, 'batch': args.batch, 'rows': rows,
                 'prepared_bytes_per_image': prepared_bytes,
                 'cpu_count': os.cpu_count(), 'table': lines}, f, indent=2)


if __name__ == '__main__':
  main()
