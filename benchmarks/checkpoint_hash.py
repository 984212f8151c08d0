r"""What the checkpoint checksums cost next to the write itself (issue 18 item 4).

The state is the full model's train state (configs/ilsvrc.py: AlexNet's ~61M
parameters plus the momentum of the same size, ~490 MB of float32), filled
with random values (zeros would compress to nothing and flatter the write).

  checksum         checkpoint.array_checksums, what every save adds: a jitted
                   reduction where the arrays are (here the device JAX runs on),
                   a few bytes back to the host.
  write            orbax StandardCheckpointer.save of the state, synchronous
                   (what a save costs without the checksums).
  save             checkpoint.Checkpointer.save as training calls it
                   (checksums + state + description + progress), synchronous.
  device_get       the copy to host NumPy that hashing on the host would need;
  crc32, sha256    zlib / hashlib over those host arrays: the alternative.

  python benchmarks/checkpoint_hash.py --output=/tmp/checkpoint_hash.json
  python benchmarks/checkpoint_hash.py --model=alexnet_tiny --rounds=1   # smoke

Each figure is the median of --rounds (after one warm-up checksum, which
compiles; its time is reported apart). The write goes to --dir (default a
temporary directory, removed).
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def full_state(model_name: str):
  """(train state with random values, bytes): the run's params + momentum."""
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from alexnet_jax import models  # pylint: disable=g-import-not-at-top
  from alexnet_jax import optimizer, steps  # pylint: disable=g-import-not-at-top
  from configs import ilsvrc  # pylint: disable=g-import-not-at-top
  config = ilsvrc.get_config()
  config.model.name = model_name
  make_optimizer = optimizer.make_optimizer
  create = steps.create_train_state
  model = models.create_model(config.model)
  tx = make_optimizer(optimizer.Hyper(**config.optimizer),
                      optimizer.Schedule(**config.schedule), 1000, 1000)
  state = jax.jit(functools.partial(create, model=model, tx=tx))(jax.random.PRNGKey(0))
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  leaves = [jax.random.normal(k, x.shape, x.dtype) if jax.numpy.issubdtype(x.dtype, jax.numpy.floating)
            and x.size > 1 else x for k, x in zip(keys, leaves)]
  state = jax.block_until_ready(jax.tree.unflatten(treedef, leaves))
  nbytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in leaves)
  return state, nbytes


def timed(fn, rounds: int) -> float:
  times = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='alexnet', help='model preset (configs: model.name)')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--dir', default=None, help='where the writes go (default: a temporary dir)')
  parser.add_argument('--output', default=None, help='JSON results path')
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from alexnet_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top

  state, nbytes = full_state(args.model)
  base = tempfile.mkdtemp(dir=args.dir, prefix='checkpoint_hash-')
  try:
    t0 = time.perf_counter()
    ckpt_lib.array_checksums(state)
    first = time.perf_counter() - t0
    rows = {'checksum': timed(lambda: ckpt_lib.array_checksums(state), args.rounds)}

    counter = iter(range(10**6))

    def write():
      path = os.path.join(base, f'w{next(counter)}')
      with ocp.StandardCheckpointer() as c:
        c.save(path, state)
        c.wait_until_finished()
      shutil.rmtree(path)

    def save():
      path = os.path.join(base, f's{next(counter)}')
      ckpt = ckpt_lib.Checkpointer(path, every_steps=1, keep=1, use_async=False)
      ckpt.save(1, state, {'model': {}}, {'step': 1}, force=True)
      ckpt.close()
      shutil.rmtree(path)

    rows['write'] = timed(write, args.rounds)
    rows['save'] = timed(save, args.rounds)
    host = jax.device_get(state)
    rows['device_get'] = timed(lambda: jax.device_get(state), args.rounds)
    arrays = [np.ascontiguousarray(x) for x in jax.tree.leaves(host)]

    def crc32():
      for x in arrays:
        zlib.crc32(memoryview(x).cast('B'))

    def sha256():
      for x in arrays:
        hashlib.sha256(memoryview(x).cast('B')).digest()

    rows['crc32'] = timed(crc32, args.rounds)
    rows['sha256'] = timed(sha256, args.rounds)
  finally:
    shutil.rmtree(base, ignore_errors=True)

  device = jax.devices()[0]
  print(f'{args.model} train state: {nbytes / 1e6:,.0f} MB ({len(jax.tree.leaves(state))} arrays), '
        f'{device.platform} ({device.device_kind}), median of {args.rounds}; '
        f'first checksum (compiles) {first:.2f} s')
  print(f'{"":<12} {"seconds":>9} {"MB/s":>9} {"of write":>9}')
  for name, t in rows.items():
    print(f'{name:<12} {t:9.3f} {nbytes / 1e6 / t:9,.0f} {100 * t / rows["write"]:8.1f}%')
  result = {'model': args.model, 'bytes': nbytes, 'platform': device.platform,
            'device_kind': device.device_kind, 'rounds': args.rounds,
            'first_checksum_s': first, 'seconds': rows,
            'checksum_fraction_of_write': rows['checksum'] / rows['write']}
  if args.output:
    with open(args.output, 'w') as f:
      json.dump(result, f, indent=2)
    print(f'Wrote {args.output}')


if __name__ == '__main__':
  main()
