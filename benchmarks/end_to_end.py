r"""Is training input-bound? train_and_evaluate with the real pipeline vs synthetic batches.

Two runs of `alexnet_jax.train.train_and_evaluate` on the same device and
config, in turn (--rounds repeats the pair, in alternating order):

  real       the input pipeline as training uses it: tf.data decoding and
             cropping on the host, uint8 batches prefetched to the device
             (config.dataset.prefetch), augmentation in the jitted step.
  synthetic  the same loop fed one batch of the same shapes that is already
             on the device (`input_pipeline.train_iterator` replaced), so no
             host work and no copy: the step alone.

Each run trains 2 x --steps steps and reports the training rate of the last
--steps (train_and_evaluate's own `train_images_per_second`, a window between
two host syncs, after compilation and the pipeline's start). The figure is
the fraction of step time lost to input: 1 - real / synthetic.

  python benchmarks/end_to_end.py --output=/tmp/end_to_end.json       # digits, CPU
  python benchmarks/end_to_end.py --config=configs/ilsvrc.py --jpegs=2048 \
      --jpeg_size=256 --set=model.dtype=bfloat16 --set=batch_size=512    # a GPU

--jpegs=N writes N JPEGs (quality 90, 10 classes) into a temporary folder
and trains from it (dataset.source=folder): --jpeg_size=256 gives the
prepared 256 x 256 files (cropped without resampling), --jpeg_size=500x375 an
on-the-fly ImageNet-sized JPEG. Evaluation is reduced to the end of the run.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def _set(config, assignment: str) -> None:
  """'a.b=value' -> config.a.b = value (value parsed as JSON/Python literal when possible)."""
  import ast  # pylint: disable=g-import-not-at-top
  key, value = assignment.split('=', 1)
  try:
    value = ast.literal_eval(value)
  except (ValueError, SyntaxError):
    pass
  target = config
  *path, leaf = key.split('.')
  for p in path:
    target = target[p]
  target[leaf] = value


def write_jpegs(root: str, n: int, size: tuple, classes: int = 10, seed: int = 0) -> float:
  """root/{train,val}/cNN/*.jpg: n training JPEGs (and one val per class); mean bytes."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  h, w = size
  total = 0
  for split, count in (('train', n), ('val', classes)):
    for i in range(count):
      d = os.path.join(root, split, f'c{i % classes:02d}')
      os.makedirs(d, exist_ok=True)
      small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
      img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
      img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)  # texture
      path = os.path.join(d, f'{i:06d}.jpg')
      Image.fromarray(img).save(path, 'JPEG', quality=90)
      total += os.path.getsize(path) if split == 'train' else 0
  return total / max(n, 1)


def run(config, mode: str, workdir: str) -> dict:
  """One train_and_evaluate; its final window's images/s."""
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from alexnet_jax import parallel  # pylint: disable=g-import-not-at-top
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  real_iterator = input_pipeline.train_iterator
  if mode == 'synthetic':
    mesh = parallel.make_mesh(config.mesh)
    sharding = parallel.batch_sharding(mesh)

    def resident(config, *, batch_size, **kw):
      first = next(real_iterator(config, batch_size=batch_size, **kw))
      batch = jax.block_until_ready(parallel.global_batch(first, sharding))
      while True:
        yield batch

    input_pipeline.train_iterator = resident
  try:
    t0 = time.time()
    train.train_and_evaluate(config, workdir)
    wall = time.time() - t0
  finally:
    input_pipeline.train_iterator = real_iterator
  with open(os.path.join(workdir, 'final_metrics.json')) as f:
    final = json.load(f)
  return {'mode': mode, 'img_per_s': final['train_images_per_second'], 'wall_s': wall}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', default=os.path.join(ROOT, 'configs', 'digits.py'))
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='config override, e.g. --set=model.dtype=bfloat16 (repeatable)')
  p.add_argument('--steps', type=int, default=40, help='timed steps (after as many warm-up)')
  p.add_argument('--rounds', type=int, default=2, help='alternate real/synthetic; median')
  p.add_argument('--jpegs', type=int, default=0, help='train from N generated JPEGs')
  p.add_argument('--jpeg_size', default='500x375', help="'256' (prepared) or 'WxH'")
  p.add_argument('--smoke', action='store_true', help='tiny model, few steps (CI, CPU)')
  p.add_argument('--output', default=None, help='write the results as JSON here')
  args = p.parse_args(argv)

  import importlib.util  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('bench_config', args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  steps = args.steps
  if args.smoke:
    steps = min(steps, 3)
    config.model.name = 'alexnet_tiny'
    config.model.conv_features = (8, 16, 24, 24, 16)
    config.model.fc_features = 64
    config.batch_size = min(config.batch_size, 16)
    config.eval.batch_size = min(config.eval.batch_size, 16)
  with tempfile.TemporaryDirectory() as tmp:
    jpeg_bytes = None
    if args.jpegs:
      w, h = (int(v) for v in (args.jpeg_size.split('x') * 2)[:2])
      jpeg_bytes = write_jpegs(os.path.join(tmp, 'data'), args.jpegs, (h, w))
      config.dataset.source = 'folder'
      config.dataset.name = 'folder'
      config.dataset.folder = os.path.join(tmp, 'data')
      config.model.num_classes = 10
    for assignment in args.set:
      _set(config, assignment)
    config.num_train_steps = 2 * steps
    config.log_every_steps = steps
    config.eval.every_epochs = 1e9          # evaluate once, at the end
    config.eval.ten_crop = False
    config.checkpoint_every_steps = 10 ** 9
    config.async_checkpoints = False
    rows = []
    for r in range(args.rounds):
      for mode in ('synthetic', 'real')[::1 if r % 2 == 0 else -1]:  # alternate the order
        row = run(config, mode, os.path.join(tmp, f'{mode}_{r}'))
        print(f'round {r}: {mode} {row["img_per_s"]:.1f} img/s', flush=True)
        rows.append(row)
  rate = {m: statistics.median(r['img_per_s'] for r in rows if r['mode'] == m)
          for m in ('synthetic', 'real')}
  lost = 1.0 - rate['real'] / rate['synthetic']
  device = jax.devices()[0]
  header = (f'device: {device.platform} ({device.device_kind}), {jax.device_count()} device(s); '
            f'model {config.model.name} conv {tuple(config.model.conv_features)} fc '
            f'{config.model.fc_features} ({config.model.dtype}), batch {config.batch_size}, '
            f'{config.model.input_size}px, data {config.dataset.source}'
            + (f' ({args.jpegs} JPEGs {args.jpeg_size}, {jpeg_bytes / 1e3:.1f} KB avg)'
               if jpeg_bytes else '')
            + f'; {steps} timed steps after {steps}, median of {args.rounds} round(s)')
  print(header)
  print(f'{"mode":<10} {"img/s":>9} {"step ms":>9}   rounds (img/s)')
  print('-' * 60)
  for m in ('synthetic', 'real'):
    per = [f'{r["img_per_s"]:.1f}' for r in rows if r['mode'] == m]
    print(f'{m:<10} {rate[m]:>9.1f} {1e3 * config.batch_size / rate[m]:>9.1f}   {" / ".join(per)}')
  print(f'fraction of step time lost to input: {100 * lost:.1f}% '
        f'(real = {100 * rate["real"] / rate["synthetic"]:.1f}% of synthetic)')
  if args.output:
    with open(args.output, 'w') as f:
      json.dump({'header': header, 'rows': rows, 'img_per_s': rate, 'input_lost_fraction': lost,
                 'config': {'model': config.model.name, 'dtype': config.model.dtype,
                            'batch_size': config.batch_size, 'steps': steps,
                            'source': config.dataset.source, 'jpegs': args.jpegs,
                            'jpeg_size': args.jpeg_size, 'jpeg_bytes': jpeg_bytes}},
                f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
