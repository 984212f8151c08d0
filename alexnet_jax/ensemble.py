r"""Table 2: the error of an ensemble of trained runs beside its members' own.

  python -m alexnet_jax.ensemble --workdirs=A,B,C [--checkpoint=latest|best] \
      [--ten_crop] --output_dir=D

Section 6: averaging the predictions of five similar CNNs gives 16.4 percent
top-5 error (Table 2, ILSVRC-2012 validation). Each model's softmax is
averaged over the models (and, with --ten_crop, first over the ten patches of
section 4.1, five for runs trained without reflections). Every member is evaluated on the eval split of its own
config with its own preprocessing; the members must share the dataset. Writes
D/ensemble.json and D/ensemble.md and prints the table, then the paper's
Table 2 in a table of its own (ILSVRC-2012 validation, each CNN's softmax
averaged over section 4.1's ten patches; comparable only on that data and with
--ten_crop). With one workdir this
is a plain evaluation of it (e.g. of weights imported by alexnet_jax.convert).
`python -m alexnet_jax.report` lists the ensembles it finds beside the runs.
"""

import json
import os
from typing import Sequence

from absl import flags
import numpy as np

from alexnet_jax import cli
from alexnet_jax import augment
from alexnet_jax import predict
from alexnet_jax import progress
from alexnet_jax import steps

RESULT = 'ensemble.json'
# Table 2: ILSVRC-2012 validation top-1 and top-5 error (%), ten patches
# (section 4.1, the paper's test-time prediction), and section 6's description
# of each model ("*": pre-trained on the ImageNet Fall 2011 release).
PAPER = (
    ('1 CNN', 40.7, 18.2, 'the CNN of the paper'),
    ('5 CNNs', 38.1, 16.4, 'the predictions of five similar CNNs averaged'),
    ('1 CNN*', 39.0, 16.6, 'one CNN with an extra sixth convolutional layer over the last '
     'pooling layer, trained on the whole Fall 2011 release (15M images, 22K categories), '
     'then fine-tuned on ILSVRC-2012'),
    ('7 CNNs*', 36.7, 15.4, 'the five CNNs and two CNNs pre-trained on the whole Fall 2011 '
     'release, predictions averaged (ILSVRC-2012 test top-5: 15.3)'))
_DATA_KEYS = ('source', 'name', 'folder', 'data_dir', 'eval_split')


def _error_rates(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
  """Top-1 and top-5 error rates of (N, K) scores: steps.topk_errors, the
  definition the runs' own evaluation used, averaged in float64."""
  top1, top5 = steps.topk_errors(probs, labels)
  return float(np.mean(np.asarray(top1, np.float64))), float(np.mean(np.asarray(top5, np.float64)))


def _member_probs(run: predict.Run, ten_crop: bool, batch_size: int, meter: progress.Meter):
  """(probs (N, K), labels (N,)) over the run's eval split, each image once."""
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  probs, labels = [], []
  for batch in input_pipeline.eval_iterator(input_pipeline.resolve(run.config), batch_size=batch_size,
                                            ten_crop=ten_crop):
    mask = batch['mask']
    p = predict.probabilities(run, batch['image'], ten_crop, batch_size)
    probs.append(p[mask])
    labels.append(batch['label'][mask])
    meter.update(int(mask.sum()))
  return np.concatenate(probs), np.concatenate(labels)


def evaluate(workdirs: Sequence[str], *, checkpoint: str = 'latest', ten_crop: bool = False,
             batch_size: int = 128) -> dict:
  """Each member's and the ensemble's top-1/top-5 error (fractions)."""
  if not workdirs:
    raise ValueError('Give at least one workdir.')
  runs = [predict.load_run(w, checkpoint) for w in workdirs]
  data = {k: runs[0].config.dataset.get(k) for k in _DATA_KEYS}
  for run in runs[1:]:
    other = {k: run.config.dataset.get(k) for k in _DATA_KEYS}
    if other != data:
      raise ValueError(f'{run.workdir} evaluates on {other}, {runs[0].workdir} on {data}: '
                       'an ensemble needs one dataset.')
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  num_eval = input_pipeline.resolve(runs[0].config).info.num_eval
  meter = progress.Meter('ensemble', len(runs) * num_eval, 'images')
  total, labels, members = None, None, []
  for run in runs:
    probs, y = _member_probs(run, ten_crop, batch_size, meter)
    if labels is not None and not np.array_equal(y, labels):
      raise ValueError(f'{run.workdir} reads its eval images in another order.')
    labels = y
    total = probs if total is None else total + probs
    top1, top5 = _error_rates(probs, y)
    members.append({'workdir': run.workdir, 'step': run.step, 'seed': run.config.get('seed'),
                    'top1_error': top1, 'top5_error': top5})
  top1, top5 = _error_rates(total / len(runs), labels)
  num_crops = runs[0].num_crops(ten_crop)
  return {'members': members, 'checkpoint': checkpoint,
          'crops': 'ten_crop' if ten_crop else 'centre', 'num_crops': num_crops,
          'num_images': int(len(labels)),
          'dataset': data,
          'ensemble': {'models': len(runs), 'top1_error': top1, 'top5_error': top5}}


def markdown(result: dict) -> str:
  """Members, their mean and the ensemble, then the paper's Table 2 (its own
  table: its numbers are ten patches on ILSVRC-2012 validation), in %."""
  pct = lambda x: f'{100 * x:.2f}'
  ms, ens = result['members'], result['ensemble']
  crops = augment.crop_name(result['crops'] == 'ten_crop', result.get('num_crops', 10) == 10)
  lines = [f'Ensemble of {ens["models"]} ({crops}, '
           f'{result["num_images"]} images of {result["dataset"]["name"]} '
           f'{result["dataset"]["eval_split"]}; error %)', '',
           '| model | step | top-1 | top-5 |', '|---|---|---|---|']
  lines += [f'| {m["workdir"]} | {m["step"]} | {pct(m["top1_error"])} | {pct(m["top5_error"])} |'
            for m in ms]
  mean = lambda k: float(np.mean([m[k] for m in ms]))
  lines.append(f'| mean of the {len(ms)} members | | {pct(mean("top1_error"))} | '
               f'{pct(mean("top5_error"))} |')
  lines.append(f'| **ensemble of {ens["models"]}** (softmax averaged) | | '
               f'**{pct(ens["top1_error"])}** | **{pct(ens["top5_error"])}** |')
  lines += ['', "The paper's Table 2 (ILSVRC-2012 validation, ten patches; error %)", '',
            '| model | top-1 | top-5 | section 6 |', '|---|---|---|---|']
  lines += [f'| {name} | {t1} | {t5} | {text} |' for name, t1, t5, text in PAPER]
  return '\n'.join(lines) + '\n'


def find_results(paths: Sequence[str]) -> list:
  """ensemble.json files in `paths` and their immediate subdirectories."""
  found = []
  for p in paths:
    candidates = [p] + ([os.path.join(p, d) for d in sorted(os.listdir(p))]
                        if os.path.isdir(p) else [])
    found += [os.path.join(c, RESULT) for c in candidates
              if os.path.isfile(os.path.join(c, RESULT))]
  return found


def write(result: dict, output_dir: str) -> str:
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, RESULT), 'w') as f:
    json.dump(result, f, indent=2)
  path = os.path.join(output_dir, 'ensemble.md')
  with open(path, 'w') as f:
    f.write(markdown(result))
  return path


def define_flags():
  flags.DEFINE_list('workdirs', None, 'Comma-separated training runs (workdirs).')
  cli.checkpoint_flag()
  flags.DEFINE_bool('ten_crop', False, 'Average each model over the ten patches too.')
  flags.DEFINE_integer('batch_size', 128, 'Evaluation batch size.')
  cli.output_dir_flag('Writes ensemble.json and ensemble.md here.', required=True)
  flags.mark_flags_as_required(['workdirs'])


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  result = evaluate(f.workdirs, checkpoint=f.checkpoint, ten_crop=f.ten_crop,
                    batch_size=f.batch_size)
  print(markdown(result), end='')
  print(f'\nWrote {write(result, f.output_dir)} and {RESULT}')


if __name__ == '__main__':
  cli.run(main, define_flags, results_only=True)
