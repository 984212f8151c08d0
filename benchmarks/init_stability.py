r"""Does the paper's recipe train? Initialization variants side by side (issue 17).

Section 5 initializes the weights from N(0, 0.01^2) and the biases of conv2,
conv4, conv5, fc6 and fc7 to 1. Caffe's bvlc_alexnet reproduction changed the
biases to 0.1, "found necessary for training, as initialization to 1 gave flat
loss" (models/bvlc_alexnet/readme.md). This script measures what each variant
does at the paper's batch (128) and learning rate (0.01), from the same
configs/ilsvrc.py recipe:

  proxy   configs/ilsvrc.py on scikit-learn's digits (dataset.source=digits,
          10 classes), the full AlexNet, 227 crops, batch 128, eps 0.01:
          offline and the same on every machine.
  jpegs   real ImageNet JPEGs (../shared/data/imagenet-sample, when present):
          the first --jpeg_images of them as that many classes, train =
          validation, batch --jpeg_batch (a folder dataset in a temp dir).

For each variant and step it records the training loss and the firing
fraction of every ReLU layer (alexnet_jax.models.firing_fraction, from the
train step's metrics: the fraction of units > 0 for at least one example of
the batch), whether and when the loss leaves chance (ln num_classes), and at
the end fc7's firing fraction on real images (the JPEGs' centre crops, with
the run's own input statistics) when the JPEGs are present.

  python benchmarks/init_stability.py                      # both, all variants
  python benchmarks/init_stability.py --datasets=proxy --variants=paper,bias_0.1
  python benchmarks/init_stability.py --report_only        # table + PNG from the JSON

Results merge into --output (one entry per dataset and variant, written after
each run, so an interrupted sweep keeps what finished); the markdown table is
printed and the figure (loss and fc7's firing fraction against step) written
to --plot. On 2 shared CPU cores a proxy step takes ~5-10 s.
"""

import argparse
import ast
import json
import math
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

SHARED_JPEGS = os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'imagenet-sample')
CAFFE_STD = (0.01, 0.01, 0.01, 0.01, 0.01, 0.005, 0.005, 0.01)  # bvlc_alexnet train_val.prototxt

# name -> (what it is, config overrides). 'warmup_steps' becomes
# schedule.warmup_epochs for the dataset's epoch length.
VARIANTS = {
    'paper': ('section 5: biases 1, std 0.01', {'model.bias_init': 1.0}),
    'bias_0.1': ('biases 0.1, std 0.01 (the smallest change)', {'model.bias_init': 0.1}),
    'caffe': ("Caffe's bvlc_alexnet: biases 0.1, fc6/fc7 std 0.005",
              {'model.bias_init': 0.1, 'model.init_std': CAFFE_STD}),
    'zero_bias': ('biases 0, std 0.01', {'model.bias_init': 0.0}),
    'paper_warmup': ('biases 1, eps warmed up linearly over 20 steps',
                     {'model.bias_init': 1.0, 'warmup_steps': 20}),
    # Not run by default; for what the evidence may ask next.
    'bias_0.1_warmup': ('biases 0.1, warmup over 20 steps',
                        {'model.bias_init': 0.1, 'warmup_steps': 20}),
    'paper_lr0.001': ('biases 1, eps 0.001', {'model.bias_init': 1.0,
                                              'optimizer.learning_rate': 0.001}),
}
DEFAULT_VARIANTS = ('paper', 'bias_0.1', 'caffe', 'zero_bias', 'paper_warmup')
WINDOW = 10   # steps averaged for "left chance"
CHANCE_MARGIN = 0.95  # left chance: the WINDOW-step mean loss < 0.95 ln(K)


def parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config, overrides: dict, spe: int = 1) -> None:
  for key, value in overrides.items():
    if key == 'warmup_steps':
      key, value = 'schedule.warmup_epochs', value / spe
    target = config
    *path, leaf = key.split('.')
    for p in path:
      target = target[p]
    target[leaf] = value


def left_chance_step(losses: list, num_classes: int):
  """First step whose trailing WINDOW-step mean loss is below 0.95 ln(K), or None."""
  bound = CHANCE_MARGIN * math.log(num_classes)
  for i in range(WINDOW - 1, len(losses)):
    if sum(losses[i - WINDOW + 1:i + 1]) / WINDOW < bound:
      return i + 1
  return None


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def jpeg_folder(root: str, n: int) -> str:
  """root/{train,val}/<wnid>/<file>: the first n sample JPEGs, one class each
  (symlinks), train = validation."""
  files = sorted(f for f in os.listdir(SHARED_JPEGS) if f.lower().endswith('.jpeg'))[:n]
  for split in ('train', 'val'):
    for f in files:
      d = os.path.join(root, split, f.split('_')[0])
      os.makedirs(d, exist_ok=True)
      os.symlink(os.path.join(SHARED_JPEGS, f), os.path.join(d, f))
  return root


def base_config(dataset: str, args, folder: str):
  from configs import ilsvrc  # pylint: disable=g-import-not-at-top
  config = ilsvrc.get_config()
  config.model.bias_init = 1.0   # The variants set what differs from the paper.
  config.schedule.name = 'constant'   # No validation here; eps stays at 0.01.
  if dataset == 'proxy':
    config.dataset.source = 'digits'
    config.model.num_classes = 10
    config.batch_size = args.proxy_batch
  else:
    config.dataset.source = 'folder'
    config.dataset.folder = folder
    config.dataset.eval_split = 'val'
    config.model.num_classes = args.jpeg_images
    config.batch_size = args.jpeg_batch
  config.dataset.shuffle_buffer = 2048
  apply_overrides(config, {k: parse_value(v) for k, v in
                           (s.split('=', 1) for s in args.set)})
  return config


# --------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------


def _steps_module():
  """The module holding train_step and friends (alexnet_jax.steps after issue 19)."""
  try:
    from alexnet_jax import steps  # pylint: disable=g-import-not-at-top
    return steps
  except ImportError:
    from alexnet_jax import train  # pylint: disable=g-import-not-at-top
    return train


def _optimizer_module():
  try:
    from alexnet_jax import optimizer  # pylint: disable=g-import-not-at-top
    return optimizer
  except ImportError:
    from alexnet_jax import train  # pylint: disable=g-import-not-at-top
    return train


def real_image_firing(config, state_params, model, input_stats, jpeg_root: str) -> dict:
  """Firing fraction of each ReLU layer on the sample JPEGs' centre crops
  (evaluation mode), preprocessed with the run's own input statistics."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from alexnet_jax import augment, input_pipeline, models  # pylint: disable=g-import-not-at-top
  c = config.copy_and_resolve_references()
  c.dataset.source, c.dataset.folder, c.dataset.eval_split = 'folder', jpeg_root, 'val'
  c.dataset.train_split = 'train'
  images = np.concatenate([b['image'][b['mask']] for b in
                           input_pipeline.eval_iterator(c, batch_size=16, ten_crop=False)])

  @jax.jit
  def firing(params, images):
    x = augment.eval_images(images, input_stats, models.input_shape(model)[0], 1,
                            float(config.input.pixel_scale))
    _, health = model.apply({'params': params}, x, train=False, mutable=['health'])
    return models.firing_metrics(health)

  return {k.removeprefix('firing_'): float(v)
          for k, v in jax.device_get(firing(state_params, images)).items()}


def run_variant(dataset: str, name: str, args, folder: str, jpeg_root) -> dict:
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import config_checks, input_pipeline, models  # pylint: disable=g-import-not-at-top
  from alexnet_jax import stats as stats_lib  # pylint: disable=g-import-not-at-top
  steps_lib, opt_lib = _steps_module(), _optimizer_module()

  config = base_config(dataset, args, folder)
  data = input_pipeline.resolve(config)
  info = data.info
  spe = input_pipeline.steps_per_epoch(info.num_train, config.batch_size)
  apply_overrides(config, VARIANTS[name][1], spe)
  num_steps = args.proxy_steps if dataset == 'proxy' else args.jpeg_steps
  config.num_train_steps = num_steps
  config_checks.check(config, num_devices=jax.device_count())

  input_stats = stats_lib.for_run(stats_lib.Settings.of(**config.input),
                                  input_pipeline.Dataset(**config.dataset),
                                  lambda: input_pipeline.stats_images(data))
  model = models.create_model(config.model)
  tx = opt_lib.make_optimizer(opt_lib.Hyper(**config.optimizer),
                              opt_lib.Schedule(**config.schedule), spe, num_steps)
  init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  state = jax.jit(functools.partial(steps_lib.create_train_state, model=model, tx=tx))(init_rng)
  step_fn = jax.jit(functools.partial(steps_lib.train_step, model=model, tx=tx,
                                      rng=dropout_rng,
                                      pixel_scale=float(config.input.pixel_scale)),
                    donate_argnums=0, compiler_options=steps_lib.step_compiler_options())
  batches = input_pipeline.train_iterator(config, batch_size=config.batch_size)

  record = {'dataset': dataset, 'variant': name, 'what': VARIANTS[name][0],
            'overrides': {k: v for k, v in VARIANTS[name][1].items()},
            'batch_size': config.batch_size, 'learning_rate': config.optimizer.learning_rate,
            'num_classes': config.model.num_classes, 'steps_per_epoch': spe,
            'chance_loss': math.log(config.model.num_classes),
            'loss': [], 'top1_error': [], 'l2_grads': [], 'learning_rate_used': [],
            'firing': {k: [] for k in models.RELU_LAYERS}, 'stopped': None}
  t0 = time.time()
  for i in range(1, num_steps + 1):
    state, m = step_fn(state, next(batches), input_stats)
    m = jax.device_get(m)
    record['loss'].append(float(m['loss']))
    record['top1_error'].append(float(m['top1_error']))
    record['l2_grads'].append(float(m['l2_grads']))
    record['learning_rate_used'].append(float(m['learning_rate']))
    for k in models.RELU_LAYERS:
      record['firing'][k].append(float(m[f'firing_{k}']))
    if i == 1 or i % args.print_every == 0 or i == num_steps:
      low = min(record['firing'], key=lambda k: record['firing'][k][-1])
      print(f'  {dataset} {name} step {i}/{num_steps}: loss {m["loss"]:.4f}, fc7 firing '
            f'{m["firing_fc7"]:.3f}, lowest {low} {record["firing"][low][-1]:.3f} '
            f'({time.time() - t0:.0f}s)', flush=True)
    if not math.isfinite(float(m['loss'])):
      record['stopped'] = f'non-finite loss at step {i}'
      print(f'  {dataset} {name}: {record["stopped"]}', flush=True)
      break
  record['wall_s'] = time.time() - t0
  record['left_chance_step'] = left_chance_step(record['loss'], config.model.num_classes)
  record['real_image_firing'] = None
  if jpeg_root and not record['stopped']:
    record['real_image_firing'] = real_image_firing(config, state.params, model, input_stats,
                                                    jpeg_root)
  return record


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _rounded(x):
  if isinstance(x, float):
    return float(f'{x:.6g}')
  if isinstance(x, dict):
    return {k: _rounded(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_rounded(v) for v in x]
  return x


def write_results(path: str, results: dict) -> None:
  """{'runs': {'dataset/variant': record}}, one line per run, 6 significant digits."""
  lines = [f'  {json.dumps(k)}: {json.dumps(_rounded(v))}' for k, v in results.items()]
  with open(path, 'w') as f:
    f.write('{"runs": {\n' + ',\n'.join(lines) + '\n}}\n')


def _mean(xs):
  return sum(xs) / len(xs) if xs else float('nan')


def table(results: dict, firing_steps) -> str:
  """Markdown: one row per dataset and variant. 'left chance at': the first
  step whose trailing 10-step mean loss is below 0.95 ln(K); 'fc7 @s': fc7's
  firing fraction on step s's batch; the last column on the real JPEGs."""
  head = ('| data | variant | steps | loss 1-10 | loss last 10 | peak loss 11+ | chance '
          '| left chance at | '
          + ' | '.join(f'fc7 @{s}' for s in firing_steps)
          + ' | lowest layer at end | fc7 on real JPEGs |')
  lines = [head, '|' + '---|' * (head.count('|') - 1)]
  for key in sorted(results, key=lambda k: (results[k]['dataset'] != 'proxy',
                                            list(VARIANTS).index(results[k]['variant'])
                                            if results[k]['variant'] in VARIANTS else 99)):
    r = results[key]
    n = len(r['loss'])
    fc7 = r['firing']['fc7']
    at = [f'{fc7[s - 1]:.2f}' if s <= n else '-' for s in firing_steps]
    low = min(r['firing'], key=lambda k: r['firing'][k][-1])
    real = r.get('real_image_firing')
    real = f"{real['fc7']:.3f}" if real else 'n/a'
    left = r['left_chance_step']
    lines.append(
        f"| {r['dataset']} | {r['variant']} | {n}{' (' + r['stopped'] + ')' if r['stopped'] else ''} "
        f"| {_mean(r['loss'][:10]):.3f} | {_mean(r['loss'][-10:]):.3f} "
        f"| {max(r['loss'][10:], default=float('nan')):.2f} | {r['chance_loss']:.3f} "
        f"| {left if left else 'no'} | " + ' | '.join(at)
        + f" | {low} {r['firing'][low][-1]:.2f} | {real} |")
  return '\n'.join(lines)


def plot(results: dict, path: str) -> None:
  """One PNG: loss (top) and fc7's firing fraction (bottom) against step, a
  column per dataset, a line per variant."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  datasets = [d for d in ('proxy', 'jpegs') if any(r['dataset'] == d for r in results.values())]
  fig, axes = plt.subplots(2, len(datasets), figsize=(6.5 * len(datasets), 7), squeeze=False,
                           sharex='col')
  titles = {'proxy': 'digits proxy: configs/ilsvrc.py, full AlexNet, batch 128, eps 0.01',
            'jpegs': 'real ImageNet JPEGs (N images = N classes), eps 0.01'}
  for col, d in enumerate(datasets):
    rows = [r for r in results.values() if r['dataset'] == d]
    rows.sort(key=lambda r: list(VARIANTS).index(r['variant']) if r['variant'] in VARIANTS else 99)
    for r in rows:
      steps = range(1, len(r['loss']) + 1)
      line, = axes[0, col].plot(steps, r['loss'], label=r['variant'], lw=1.2)
      axes[1, col].plot(steps, r['firing']['fc7'], color=line.get_color(), lw=1.2)
    chance = rows[0]['chance_loss']
    axes[0, col].axhline(chance, color='k', ls=':', lw=1, label=f'chance ln {rows[0]["num_classes"]}')
    axes[0, col].set_yscale('log')
    axes[0, col].set_ylabel('training loss')
    title = titles[d]
    if d == 'jpegs':
      title = title.replace('N images = N classes', f'{rows[0]["num_classes"]} images = '
                            f'{rows[0]["num_classes"]} classes, batch {rows[0]["batch_size"]}')
    axes[0, col].set_title(title, fontsize=9)
    axes[0, col].legend(fontsize=8)
    axes[1, col].set_ylabel('fc7 units firing (fraction)')
    axes[1, col].set_ylim(-0.03, 1.03)
    axes[1, col].set_xlabel('step')
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


# --------------------------------------------------------------------------
# Command
# --------------------------------------------------------------------------


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--datasets', default='proxy,jpegs', help="'proxy', 'jpegs' or both")
  p.add_argument('--variants', default=','.join(DEFAULT_VARIANTS),
                 help=f'comma-separated, of {", ".join(VARIANTS)}')
  p.add_argument('--proxy_steps', type=int, default=60)
  p.add_argument('--proxy_batch', type=int, default=128)
  p.add_argument('--jpeg_steps', type=int, default=150)
  p.add_argument('--jpeg_images', type=int, default=16, help='images = classes')
  p.add_argument('--jpeg_batch', type=int, default=16)
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='config override for every run, e.g. --set=seed=1 (repeatable)')
  p.add_argument('--firing_steps', default='1,5,10,20,40,60,100,150',
                 help="steps at which the table shows fc7's firing fraction")
  p.add_argument('--print_every', type=int, default=5)
  p.add_argument('--output', default=os.path.join(ROOT, 'benchmarks', 'results',
                                                  'init_stability.json'))
  p.add_argument('--plot', default=os.path.join(ROOT, 'docs', 'init_stability.png'))
  p.add_argument('--report_only', action='store_true', help='table and PNG from --output')
  args = p.parse_args(argv)

  variants = [v for v in args.variants.split(',') if v]
  unknown = [v for v in variants if v not in VARIANTS]
  datasets = [d for d in args.datasets.split(',') if d]
  if unknown or any(d not in ('proxy', 'jpegs') for d in datasets):
    print(f'ERROR: unknown variant(s) {unknown} or dataset(s) {datasets}; variants are '
          f'{list(VARIANTS)}, datasets proxy and jpegs.', file=sys.stderr)
    return 2
  results = {}
  if os.path.exists(args.output):
    with open(args.output) as f:
      results = json.load(f)['runs']

  have_jpegs = os.path.isdir(SHARED_JPEGS)
  if not args.report_only:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    import jax  # pylint: disable=g-import-not-at-top
    if 'jpegs' in datasets and not have_jpegs:
      print(f'{SHARED_JPEGS} is absent: no real-JPEG runs and no real-image firing.')
      datasets = [d for d in datasets if d != 'jpegs']
    command = 'python benchmarks/init_stability.py ' + ' '.join(
        sys.argv[1:] if argv is None else argv)
    device = jax.devices()[0]
    with tempfile.TemporaryDirectory() as tmp:
      folder = jpeg_folder(os.path.join(tmp, 'jpegs'), args.jpeg_images) if have_jpegs else None
      for d in datasets:
        for v in variants:
          print(f'{d} / {v}: {VARIANTS[v][0]}', flush=True)
          results[f'{d}/{v}'] = {**run_variant(d, v, args, folder, folder),
                                 'command': command.strip(),
                                 'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
                                 'device': f'{device.platform} ({device.device_kind})'}
          os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
          write_results(args.output, results)
  if not results:
    print(f'ERROR: no results in {args.output}; run without --report_only first.',
          file=sys.stderr)
    return 1
  firing_steps = [int(s) for s in args.firing_steps.split(',')]
  print(table(results, firing_steps))
  plot(results, args.plot)
  print(f'Wrote {args.plot}' + ('.' if args.report_only else f' and {args.output}.'))
  return 0


if __name__ == '__main__':
  sys.exit(main())
