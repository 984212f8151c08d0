r"""Classify image files with a trained run: top-5 class names and probabilities.

  python -m alexnet_jax.predict --workdir=W [--checkpoint=latest|best] \
      [--ten_crop] [--output_dir=D] IMAGE_OR_FOLDER...

Rebuilds the model and the evaluation preprocessing from W/config.json (the
run's own resize, crop size, statistics and pixel scale: the uint8 pixels of
preprocessing.eval_example, finished by steps.eval_probs as in evaluation),
restores the parameters of W's latest or best checkpoint, and prints each
image's top-k classes, named by W/class_names.json (written at training time).
The default is the centre crop; --ten_crop averages the softmax over the
paper's ten patches (section 4.1; five when the run trained without
reflections). A folder stands for the image files directly inside it. With
--output_dir, D/predictions.json holds the same numbers. A file that cannot be
read as an image is reported (an ERROR line in its place, an entry in the
JSON's "errors") and the others are predicted; the exit status is then 1.

``load_run`` and ``probabilities`` are shared by alexnet_jax.figures and
alexnet_jax.ensemble.
"""

import dataclasses
import functools
import json
import os
import re
import sys
from typing import Any, Optional, Sequence

from absl import flags
import jax
import ml_collections
import numpy as np

from alexnet_jax import augment
from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import cli
from alexnet_jax import models
from alexnet_jax import progress
from alexnet_jax import stats as stats_lib
from alexnet_jax import steps

EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')


@dataclasses.dataclass
class Run:
  """A trained run as needed for inference."""
  workdir: str
  config: ml_collections.ConfigDict
  model: Any
  params: Any
  class_names: list
  step: int
  stats: augment.DeviceStats  # the run's input statistics, as its evaluation used them

  @property
  def pixel_scale(self) -> augment.PixelScale:
    return augment.pixel_scale_of(self.config.input.pixel_scale)

  def num_crops(self, ten_crop: bool) -> int:
    """1, or the run's ten patches (five if it trained without reflections)."""
    return augment.num_eval_crops(self.config.input.flip) if ten_crop else 1


def _tuples(tree):
  """JSON lists back to the tuples the configs use."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(v) for v in tree)
  return tree


def run_keys() -> list:
  """What the tools read from a run's config.json: the model's name, classes
  and crop size (its other keys, absent or None, are the model's own defaults),
  the source, and the evaluation input: every config.input key that the
  preprocessing Recipe (input_pipeline.make_recipe) or stats.Settings takes,
  and the pixel scale. Derived from those, so a new input key is asked of old
  runs without a list to keep here."""
  from alexnet_jax import preprocessing  # pylint: disable=g-import-not-at-top  (TensorFlow)
  recipe = [f for f in preprocessing.Recipe._fields  # set by make_recipe, not config.input:
            if f not in ('crop_size', 'pca_std', 'base_jpegs')]
  settings = [f.name for f in dataclasses.fields(stats_lib.Settings)]
  inputs = dict.fromkeys(recipe + settings + ['pca_lighting', 'pixel_scale'])
  return (['model.name', 'model.num_classes', 'model.input_size',
           'dataset.source', 'dataset.prepared_dir', 'dataset.folder']
          + [f'input.{k}' for k in inputs])


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """W/config.json as the run wrote it. One written by an earlier version that
  lacks keys the tools read (`run_keys`) is refused, the keys named."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: --workdir must be a directory '
                            'that alexnet_jax.main (or alexnet_jax.convert) wrote.')
  with open(path) as f:
    saved = _tuples(json.load(f))
  missing = [k for k in run_keys() if not _has(saved, k)]
  if missing:
    raise ValueError(
        f'{path} has no {", ".join(missing)}: an earlier version of alexnet_jax wrote '
        'this run. Add each key to that file with the value the run used (its config '
        'file as it was then, e.g. `git show REV:configs/ilsvrc.py`), then run this again.')
  return ml_collections.ConfigDict(saved)


def _has(tree: dict, dotted: str) -> bool:
  for k in dotted.split('.'):
    if not isinstance(tree, dict) or k not in tree:
      return False
    tree = tree[k]
  return True


def load_class_names(workdir: str, config, num_classes: int) -> list:
  """W/class_names.json; for runs without one, from the dataset, else the ids."""
  path = os.path.join(workdir, 'class_names.json')
  if os.path.exists(path):
    with open(path) as f:
      return list(json.load(f))
  try:
    from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    return list(input_pipeline.resolve(config).info.class_names)
  except Exception:  # pylint: disable=broad-except
    return [str(i) for i in range(num_classes)]


def load_run(workdir: str, checkpoint: str = 'latest') -> Run:
  """Config, model and parameters of `workdir` (checkpoint 'latest' or 'best')."""
  config = load_config(workdir)
  params, _, step = ckpt_lib.load_params(workdir, checkpoint)
  model = models.create_model(config.model)
  names = load_class_names(workdir, config, config.model.num_classes)
  return Run(str(workdir), config, model, params, names, step, run_stats(config, workdir))


def run_stats(config, workdir: Optional[str] = None) -> augment.DeviceStats:
  """The input statistics the run's evaluation used (stats.for_run): a folder
  source's as cached beside it or in `workdir`; reads the dataset only where
  none are stored (digits, a first run)."""
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return stats_lib.for_run(
      stats_lib.Settings.of(**config.input), input_pipeline.Dataset(**config.dataset),
      lambda: input_pipeline.stats_images(input_pipeline.resolve(config)), workdir)


def list_images(paths: Sequence[str]) -> list:
  """Files as given; a folder stands for the image files directly inside it."""
  files = []
  for p in paths:
    if os.path.isdir(p):
      files += sorted(os.path.join(p, f) for f in os.listdir(p)
                      if f.lower().endswith(EXTENSIONS))
    elif os.path.isfile(p):
      files.append(p)
    else:
      raise FileNotFoundError(f'No image file or folder {p}.')
  if not files:
    raise FileNotFoundError(f'No image files ({"/".join(EXTENSIONS)}) in {list(paths)}.')
  return files


def read_images(config, files: Sequence[str], ten_crop: bool,
                meter: Optional[progress.Meter] = None) -> tuple[list, dict]:
  """([uint8 image per readable file], {file: why it is unreadable}): each
  file as `eval_images` prepares it; an unreadable one does not stop the rest.
  `meter` counts the files read."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from alexnet_jax import preprocessing  # pylint: disable=g-import-not-at-top
  recipe = input_pipeline.make_recipe(config.model.input_size, **config.input)
  images, errors = [], {}
  for f in files:
    try:
      images.append(preprocessing.eval_example(tf.io.read_file(f), recipe, ten_crop).numpy())
    except tf.errors.OpError as e:
      reason = re.sub(r'\{\{[^}]*\}\}\s*', '', e.message or '').split(' [Op:')[0].strip()
      errors[f] = f'{f} is not a readable image ({type(e).__name__}: {reason[:200]}).'
    if meter:
      meter.update(1)
  return images, errors


def eval_images(config, files: Sequence[str], ten_crop: bool) -> np.ndarray:
  """uint8 (N, S, S, 3) centre crops, or with ten_crop (N, R, R, 3) images (or
  (N, 5, S, S, 3) patches without a central crop): what the eval pipeline sends.
  Raises ValueError naming the first unreadable file."""
  images, errors = read_images(config, files, ten_crop)
  if errors:
    raise ValueError(next(iter(errors.values())))
  return np.stack(images)


@functools.lru_cache(maxsize=None)
def _probs_fn(model, num_crops: int, pixel_scale: float):
  return jax.jit(functools.partial(steps.eval_probs, model=model, num_crops=num_crops,
                                   pixel_scale=pixel_scale))


def probabilities(run: Run, images: np.ndarray, ten_crop: bool = False,
                  batch_size: int = 64, meter: Optional[progress.Meter] = None) -> np.ndarray:
  """(N, K) softmax of `eval_images` output (the eval pipeline's uint8 images),
  averaged over the run's ten (five) patches with ten_crop: steps.eval_probs,
  the function the run's own evaluation used. `meter` counts the images done."""
  fn = _probs_fn(run.model, run.num_crops(ten_crop), run.pixel_scale)
  batches = (np.asarray(fn(run.params, images[i:i + batch_size], run.stats))
             for i in range(0, len(images), batch_size))
  return np.concatenate(list(meter.iterate(batches) if meter else batches))


def top_k(probs: np.ndarray, names: Sequence[str], k: int = 5) -> list:
  """Per row: [(class id, name, probability)] of the k most probable classes."""
  order = np.argsort(-probs, axis=-1, kind='stable')[:, :k]
  return [[(int(c), names[c], float(p[c])) for c in row] for p, row in zip(probs, order)]


def format_predictions(files: Sequence[str], tops: Sequence[list], errors: dict = None,
                       order: Sequence[str] = None) -> str:
  """Each file and its top-k lines; an unreadable file (in `errors`, not in
  `files`) gets its ERROR line instead, in its place in `order` (all files)."""
  lines, tops, errors = [], dict(zip(files, tops)), errors or {}
  for f in order or files:
    lines.append(f)
    if f in errors:
      lines.append(f'  ERROR: {errors[f]}')
    else:
      lines += [f'  {i}. {name:<24} {100 * p:6.2f}%' for i, (_, name, p) in enumerate(tops[f], 1)]
  return '\n'.join(lines)


def predict(workdir: str, paths: Sequence[str], *, checkpoint: str = 'latest',
            ten_crop: bool = False, k: int = 5) -> dict:
  """Top-k of each image file; unreadable files are listed in 'errors' (file ->
  message) and left out of 'files' and 'predictions', the rest predicted."""
  run = load_run(workdir, checkpoint)
  every = list_images(paths)
  images, errors = read_images(run.config, every, ten_crop,
                               progress.Meter('predict: reading', len(every)))
  files = [f for f in every if f not in errors]
  tops = (top_k(probabilities(run, np.stack(images), ten_crop,
                              meter=progress.Meter('predict: classifying', len(images))),
                run.class_names, k) if images else [])
  text = format_predictions(files, tops, errors, every)
  return {'workdir': run.workdir, 'checkpoint': checkpoint, 'step': run.step,
          'crops': 'ten_crop' if ten_crop else 'centre', 'num_crops': run.num_crops(ten_crop),
          'crop_name': augment.crop_name(ten_crop, run.config.input.flip), 'files': files,
          'predictions': [[{'class': c, 'name': n, 'probability': p} for c, n, p in t]
                          for t in tops],
          'errors': [{'file': f, 'error': e} for f, e in errors.items()],
          'text': text}


def define_flags():
  cli.workdir_flag('A training run (or alexnet_jax.convert output).', required=True)
  cli.checkpoint_flag()
  flags.DEFINE_bool('ten_crop', False, "Average the softmax over the paper's ten "
                    'patches (section 4.1; five, without reflections, for a run that '
                    'trained without them) instead of the centre crop.')
  flags.DEFINE_integer('top_k', 5, 'Classes to list per image.')
  cli.output_dir_flag('Also write OUTPUT_DIR/predictions.json.')


def main(argv: Sequence[str]) -> None:
  result = predict(flags.FLAGS.workdir, argv[1:], checkpoint=flags.FLAGS.checkpoint,
                   ten_crop=flags.FLAGS.ten_crop, k=flags.FLAGS.top_k)
  print(f'{result["workdir"]} step {result["step"]} ({result["checkpoint"]}), '
        f'{result["crop_name"]}:')
  print(result.pop('text'))
  if flags.FLAGS.output_dir:
    os.makedirs(flags.FLAGS.output_dir, exist_ok=True)
    out = os.path.join(flags.FLAGS.output_dir, 'predictions.json')
    with open(out, 'w') as f:
      json.dump(result, f, indent=2)
    print(f'Wrote {out}')
  if result['errors']:  # The rest is predicted; the status says not all were.
    total = len(result['files']) + len(result['errors'])
    print(f'ERROR: {len(result["errors"])} of {total} image files could not be read: '
          f'{", ".join(e["file"] for e in result["errors"])}.', file=sys.stderr)
    sys.exit(cli.ERROR_STATUS)


if __name__ == '__main__':
  cli.run(main, define_flags, args='one or more image files or folders', results_only=True)
