r"""The paper's figures from trained runs (PNG with matplotlib Agg, numbers as JSON).

  python -m alexnet_jax.figures fig1 --output_dir=D [--data=cifar10|digits] [--epochs=35]
  python -m alexnet_jax.figures fig3 --workdir=W --output_dir=D [--checkpoint=latest|best]
  python -m alexnet_jax.figures fig4 --workdir=W --output_dir=D [--num_queries=5]
      [--neighbours=6] [--train_images=10000]

fig1  Figure 1: the CIFAR-10 CNN (models.Figure1Net, cuda-convnet's layers-80sec)
      trained with ReLU and with tanh (configs/cifar10.py, no regularization),
      training error vs epoch, the first epoch each reaches 25 percent and their ratio
      (the paper: ReLU six times faster). Trains D/relu and D/tanh (a rerun
      resumes them). --data=digits runs offline on scikit-learn's digits as a
      stand-in; the figure and the printout say which data was used. On
      stderr: each run's start, its step lines (with that run's ETA) and a
      `fig1: 1/2 runs | ... | ETA` line after each run.
fig3  Figure 3: W's conv1 kernels, each contrast-stretched to [0, 1] on its own,
      the kernels of each tower (section 3.2) on their own rows.
fig4  Figure 4: for the first --num_queries evaluation images, the top-5
      predictions and the training images whose last hidden layer (fc7 after
      its ReLU, 4096-d in the paper's model) is nearest in Euclidean distance.
      Training images are the first --train_images of the training order, as the
      evaluation's centre crop.

Outputs: D/fig1.png + fig1.json, D/fig3.png, D/fig4.png + fig4.json.
"""

import functools
import importlib.util
import json
import math
import os
from typing import Optional, Sequence

from absl import flags
from absl import logging
import jax
import numpy as np

from alexnet_jax import augment
from alexnet_jax import cli
from alexnet_jax import models
from alexnet_jax import predict
from alexnet_jax import progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The last hidden layer of each model (the input of its classifier layer).
LAST_HIDDEN = {'AlexNet': 'fc7', 'TorchvisionAlexNet': 'fc7', 'Figure1Net': 'fc4'}


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, output_dir: str, name: str, result: dict = None) -> str:
  """Writes OUTPUT_DIR/NAME.png (and NAME.json of `result`, with the PNG's path)."""
  fig.tight_layout()
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, f'{name}.png')
  fig.savefig(path)
  _pyplot().close(fig)
  if result is not None:
    result['png'] = path
    with open(os.path.join(output_dir, f'{name}.json'), 'w') as f:
      json.dump(result, f, indent=2)
  return path


# --------------------------------------------------------------------------
# Figure 3: conv1 kernels
# --------------------------------------------------------------------------


def stretch(kernel: np.ndarray) -> np.ndarray:
  """One kernel's values mapped linearly onto [0, 1] (min -> 0, max -> 1)."""
  lo, hi = kernel.min(), kernel.max()
  return (kernel - lo) / (hi - lo) if hi > lo else np.full_like(kernel, 0.5)


def kernel_mosaic(kernel: np.ndarray, towers: int = 1, cols: int = 16,
                  gap: int = 1, tower_gap: int = 4) -> np.ndarray:
  """(kh, kw, 3, Cout) conv1 kernel -> (H, W, 3) image in [0, 1] on white.

  Tower t's kernels (output maps [t Cout/towers, (t+1) Cout/towers)) fill
  ceil(Cout/towers/cols) rows of `cols`, below tower t-1's, `tower_gap` pixels apart.
  """
  kh, kw, _, cout = kernel.shape
  per = cout // towers
  rows = math.ceil(per / cols)
  height = towers * rows * (kh + gap) + (towers - 1) * tower_gap
  out = np.ones((height, cols * (kw + gap), 3))
  for c in range(cout):
    t, i = divmod(c, per)
    r, col = divmod(i, cols)
    y = t * (rows * (kh + gap) + tower_gap) + r * (kh + gap)
    x = col * (kw + gap)
    out[y:y + kh, x:x + kw] = stretch(np.asarray(kernel[..., c], np.float64))
  return out


def fig3(workdir: str, output_dir: str, checkpoint: str = 'latest') -> dict:
  run = predict.load_run(workdir, checkpoint)
  kernel = np.asarray(run.params['conv1']['kernel'])  # (kh, kw, 3, Cout)
  towers = int(getattr(run.model, 'towers', 1))
  mosaic = kernel_mosaic(kernel, towers)
  plt = _pyplot()
  h, w = mosaic.shape[:2]
  fig, ax = plt.subplots(figsize=(max(4.0, w / 22), max(1.5, h / 22) + 0.5), dpi=100)
  ax.imshow(mosaic, interpolation='nearest')
  ax.set_axis_off()
  kh, kw, cin, cout = kernel.shape
  ax.set_title(f'{cout} conv1 kernels ({kh}x{kw}x{cin}), step {run.step}; '
               + (f'{towers} towers, one per block of rows' if towers > 1 else 'one tower'),
               fontsize=8)
  return {'png': _save(fig, output_dir, 'fig3'), 'kernels': cout, 'towers': towers,
          'step': run.step}


# --------------------------------------------------------------------------
# Figure 4: nearest neighbours in the last hidden layer
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _features_fn(model, pixel_scale: float):
  layer = LAST_HIDDEN[type(model).__name__]
  act = {'relu': jax.nn.relu, 'tanh': jax.numpy.tanh}[getattr(model, 'activation', 'relu')]
  size = models.input_shape(model)[0]

  def features(params, images, stats):
    x = augment.eval_images(images, stats, size, 1, pixel_scale)  # (b, S, S, 3) float32
    _, state = model.apply({'params': params}, x, train=False,
                           capture_intermediates=lambda m, _: m.name == layer,
                           mutable=['intermediates'])
    return act(state['intermediates'][layer]['__call__'][0])
  return jax.jit(features)


def last_hidden(run: predict.Run, images: np.ndarray, batch_size: int = 128,
                meter: Optional[progress.Meter] = None) -> np.ndarray:
  """(N, D) activations of the last hidden layer (fc7 after ReLU) of uint8
  (N, S, S, 3) centre crops, finished as the run's evaluation does (augment.eval_images).
  `meter` counts the images done."""
  fn = _features_fn(run.model, run.pixel_scale)
  batches = (np.asarray(fn(run.params, images[i:i + batch_size], run.stats))
             for i in range(0, len(images), batch_size))
  return np.concatenate(list(meter.iterate(batches) if meter else batches))


def centre_crop_config(config):
  """config with training augmentation off: its uint8 training patches come out
  as the evaluation's centre crop (preprocessing.train_example with no random
  crop, reflection or lighting, and the exact resampling of eval_example)."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.input.random_crop = False
    config.input.flip = False
    config.input.pca_lighting = 0.0
    config.input.random_resized_crop = False
    config.input.fast_train_resample = False
  return config


def train_images(config, n: int, batch_size: int = 64,
                 label: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
  """The first n training images of pass 0's order as uint8 (n, S, S, 3) centre
  crops, with labels. `label`: print progress lines under that name."""
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  config = centre_crop_config(config)
  data = input_pipeline.resolve(config)
  n = min(n, data.info.num_train)
  batch_size = min(batch_size, n)
  it = input_pipeline.train_iterator(data, batch_size=batch_size)
  meter = progress.Meter(label, n // batch_size * batch_size) if label else None
  batches = []
  for _ in range(n // batch_size):
    batches.append(next(it))
    if meter:
      meter.update(batch_size)
  return (np.concatenate([b['image'] for b in batches]),
          np.concatenate([b['label'] for b in batches]))


def eval_images(config, n: int) -> tuple[np.ndarray, np.ndarray]:
  """The first n evaluation images as uint8 (n, S, S, 3) centre crops, with labels."""
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  images, labels = [], []
  for batch in input_pipeline.eval_iterator(input_pipeline.resolve(config), batch_size=min(n, 128)):
    images.append(batch['image'][batch['mask']])
    labels.append(batch['label'][batch['mask']])
    if sum(len(x) for x in labels) >= n:
      break
  return np.concatenate(images)[:n], np.concatenate(labels)[:n]


def nearest(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices (Q, k), distances (Q, k)): the k rows of `database` nearest to each
  query in Euclidean distance, nearest first (float64)."""
  q, d = queries.astype(np.float64), database.astype(np.float64)
  dist = np.sqrt(np.maximum((q * q).sum(1)[:, None] - 2 * q @ d.T + (d * d).sum(1)[None], 0))
  order = np.argsort(dist, axis=1, kind='stable')[:, :k]
  return order, np.take_along_axis(dist, order, 1)


def fig4(workdir: str, output_dir: str, checkpoint: str = 'latest', num_queries: int = 5,
         neighbours: int = 6, num_train: int = 10_000) -> dict:
  run = predict.load_run(workdir, checkpoint)
  names = run.class_names
  q_images, q_labels = eval_images(run.config, num_queries)
  t_images, t_labels = train_images(run.config, num_train, label='fig4: reading training images')
  features = last_hidden(run, t_images, meter=progress.Meter(
      f'fig4: {LAST_HIDDEN[type(run.model).__name__]} of the training images', len(t_images)))
  idx, dist = nearest(last_hidden(run, q_images), features, neighbours)
  tops = predict.top_k(predict.probabilities(run, q_images), names, 5)
  result = {'workdir': run.workdir, 'step': run.step, 'checkpoint': checkpoint,
            'layer': LAST_HIDDEN[type(run.model).__name__], 'train_images': len(t_images),
            'queries': [
                {'eval_index': i, 'label': names[int(q_labels[i])],
                 'top5': [{'name': n, 'probability': p} for _, n, p in tops[i]],
                 'neighbours': [{'train_position': int(j), 'label': names[int(t_labels[j])],
                                 'distance': float(d)} for j, d in zip(idx[i], dist[i])]}
                for i in range(len(q_images))]}
  plt = _pyplot()
  q_show, t_show = q_images / 255.0, t_images / 255.0  # uint8 pixels -> [0, 1] RGB
  cols = neighbours + 2
  fig, axes = plt.subplots(len(q_images), cols, figsize=(1.3 * cols, 1.4 * len(q_images)),
                           dpi=80, squeeze=False)
  for i, row in enumerate(axes):
    for ax in row:
      ax.set_axis_off()
    row[0].imshow(q_show[i], interpolation='nearest')
    row[0].set_title(f'eval {i}: {names[int(q_labels[i])]}', fontsize=7)
    row[1].text(0, 0.5, '\n'.join(f'{n[:14]} {100 * p:.0f}%' for _, n, p in tops[i]),
                fontsize=6, va='center', family='monospace')
    for j in range(neighbours):
      row[2 + j].imshow(t_show[idx[i, j]], interpolation='nearest')
      row[2 + j].set_title(f'{names[int(t_labels[idx[i, j]])]} d={dist[i, j]:.3g}', fontsize=6)
  fig.suptitle(f'Nearest training images by {result["layer"]} distance '
               f'(of {len(t_images)}), step {run.step}', fontsize=8)
  _save(fig, output_dir, 'fig4', result)
  return result


# --------------------------------------------------------------------------
# Figure 1: ReLU vs tanh
# --------------------------------------------------------------------------


def load_config(path: str, arg: str = None):
  """get_config(arg) of a config file (configs/*.py) as alexnet_jax.main reads it."""
  spec = importlib.util.spec_from_file_location(
      'config_' + os.path.basename(path)[:-3], os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def first_epoch_below(curve: Sequence[tuple[float, float]], threshold: float):
  """The first epoch whose training error is <= threshold (None if never)."""
  return next((e for e, err in curve if err <= threshold), None)


def _cifar10_stats(config, output_dir: str) -> str:
  """The CIFAR-10 training mean image (and PCA), computed once into output_dir."""
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from alexnet_jax import stats  # pylint: disable=g-import-not-at-top
  path = os.path.join(output_dir, f'cifar10_stats_{config.input.resize_size}.npz')
  if not os.path.exists(path):
    data = input_pipeline.resolve(config)
    meter = progress.Meter('fig1: CIFAR-10 mean image', data.info.num_train)
    source = stats.computed_source(input_pipeline.data_sources.describe(
        input_pipeline.Dataset(**config.dataset)), config.dataset.train_split)
    stats.save(stats.compute(meter.iterate(input_pipeline.stats_images(data)),
                             source=source), path)
  return path


def figure1_configs(data: str, epochs: float, learning_rates: dict, output_dir: str) -> dict:
  """{activation: config} for the two runs of figure 1."""
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  configs = {}
  for act in ('relu', 'tanh'):
    config = load_config('configs/cifar10.py', f'{act},digits' if data == 'digits' else act)
    if data == 'cifar10':
      config.input.stats_path = _cifar10_stats(config, output_dir)
    spe = input_pipeline.steps_per_epoch(input_pipeline.resolve(config).info.num_train,
                                         config.batch_size)
    config.num_epochs = float(epochs)
    config.log_every_steps = spe           # train_top1_error = the epoch's mean
    config.eval.every_epochs = float(epochs)
    config.checkpoint_every_steps = 10 * spe
    config.optimizer.learning_rate = learning_rates[act]
    configs[act] = config
  return configs


def fig1(output_dir: str, data: str = 'cifar10', epochs: float = 35,
         learning_rates: dict = None, threshold: float = 0.25) -> dict:
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from alexnet_jax import report  # pylint: disable=g-import-not-at-top
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  if data not in ('cifar10', 'digits'):
    raise ValueError(f"--data must be 'cifar10' or 'digits', got {data!r}.")
  learning_rates = learning_rates or {'relu': 0.001, 'tanh': 0.001}
  os.makedirs(output_dir, exist_ok=True)
  dataset = ('CIFAR-10 (tfds cifar10)' if data == 'cifar10' else
             "scikit-learn digits upscaled to 32x32 (offline stand-in for CIFAR-10)")
  result = {'data': dataset, 'threshold': threshold, 'epochs': epochs, 'runs': {}}
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
  configs = figure1_configs(data, epochs, learning_rates, output_dir)
  meter = progress.Meter('fig1', len(configs), 'runs', quiet_below_s=0)
  for i, (act, config) in enumerate(configs.items()):
    workdir = os.path.join(output_dir, act)
    meter.out(f'fig1: run {i + 1}/{len(configs)}, {act}, {epochs:g} epochs in {workdir} '
              "(its step lines give that run's ETA)")
    train.train_and_evaluate(config, workdir)
    meter.update(1)
    spe = input_pipeline.steps_per_epoch(input_pipeline.resolve(config).info.num_train,
                                         config.batch_size)
    curve = [(s / spe, v) for s, v in report.read_scalars(workdir)['train_top1_error']]
    result['runs'][act] = {
        'workdir': workdir, 'learning_rate': config.optimizer.learning_rate,
        'epoch_to_threshold': first_epoch_below(curve, threshold),
        'final_train_error': curve[-1][1],
        'curve': [[e, v] for e, v in curve]}
    ax.plot([e for e, _ in curve], [v for _, v in curve], '-' if act == 'relu' else '--',
            label=f'{act} (lr {config.optimizer.learning_rate:g})')
  relu, tanh = (result['runs'][a]['epoch_to_threshold'] for a in ('relu', 'tanh'))
  result['ratio_tanh_over_relu'] = tanh / relu if relu and tanh else None
  ax.axhline(threshold, color='grey', ls=':', lw=1)
  ax.set_xlabel('epochs')
  ax.set_ylabel('training error rate')
  ax.set_ylim(0, None)
  ax.set_title(f'Figure 1 on {dataset}'.replace(' (offline', '\n(offline'), fontsize=8)
  ax.legend(fontsize=8)
  _save(fig, output_dir, 'fig1', result)
  return result


def format_fig1(result: dict) -> str:
  t = 100 * result['threshold']
  lines = [f'Figure 1 data: {result["data"]}']
  for act, r in result['runs'].items():
    e = r['epoch_to_threshold']
    lines.append(f'  {act}: lr {r["learning_rate"]:g}, training error {100 * r["final_train_error"]:.2f}% '
                 f'after {result["epochs"]:g} epochs; first <= {t:g}% at epoch '
                 + (f'{e:g}' if e is not None else f'(not reached in {result["epochs"]:g})'))
  ratio = result['ratio_tanh_over_relu']
  lines.append(f'  tanh/relu epochs to {t:g}%: ' + (f'{ratio:.2f}' if ratio else 'n/a')
               + ' (paper, CIFAR-10: about 6)')
  return '\n'.join(lines)


# --------------------------------------------------------------------------
# Command
# --------------------------------------------------------------------------


def define_flags():
  cli.workdir_flag('fig3, fig4: the training run.')
  cli.output_dir_flag('Where the PNG and JSON files go.', required=True)
  cli.checkpoint_flag()
  flags.DEFINE_integer('num_queries', 5, 'fig4: evaluation images to show.')
  flags.DEFINE_integer('neighbours', 6, 'fig4: nearest training images per query.')
  flags.DEFINE_integer('train_images', 10_000, 'fig4: training images searched.')
  flags.DEFINE_enum('data', 'cifar10', ['cifar10', 'digits'], 'fig1: the dataset.')
  flags.DEFINE_float('epochs', 35, 'fig1: epochs per run.')
  flags.DEFINE_float('relu_lr', 0.001, 'fig1: the ReLU net\'s learning rate.')
  flags.DEFINE_float('tanh_lr', 0.001, 'fig1: the tanh net\'s learning rate.')


def main(argv: Sequence[str]) -> None:
  commands = ('fig1', 'fig3', 'fig4')
  if len(argv) != 2 or argv[1] not in commands:
    cli.fail(f'Give one sub-command: {", ".join(commands)}.', cli.USAGE_STATUS)
  f = flags.FLAGS
  if argv[1] in ('fig3', 'fig4') and not f.workdir:
    cli.fail(f'{argv[1]} needs --workdir.', cli.USAGE_STATUS)
  if argv[1] == 'fig3':
    r = fig3(f.workdir, f.output_dir, f.checkpoint)
    print(f'Wrote {r["png"]}: {r["kernels"]} conv1 kernels, {r["towers"]} tower(s), step {r["step"]}')
  elif argv[1] == 'fig4':
    r = fig4(f.workdir, f.output_dir, f.checkpoint, f.num_queries, f.neighbours, f.train_images)
    for i, q in enumerate(r['queries']):
      top = ', '.join(f'{p["name"]} {100 * p["probability"]:.1f}%' for p in q['top5'])
      near = ', '.join(f'{n["label"]} ({n["distance"]:.3g})' for n in q['neighbours'])
      print(f'eval {i} (label {q["label"]}): top-5 {top}\n  nearest {r["layer"]}: {near}')
    print(f'Wrote {r["png"]} and fig4.json ({r["train_images"]} training images searched)')
  else:
    logging.set_verbosity(logging.INFO)  # the training loop's step lines: progress, ETA
    r = fig1(f.output_dir, f.data, f.epochs, {'relu': f.relu_lr, 'tanh': f.tanh_lr})
    print(format_fig1(r))
    print(f'Wrote {r["png"]} and fig1.json')


if __name__ == '__main__':
  cli.run(main, define_flags, args='one sub-command: fig1, fig3 or fig4', results_only=True)
