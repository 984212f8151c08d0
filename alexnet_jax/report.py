r"""Collects the final metrics of runs into a table beside the paper's numbers.

  python -m alexnet_jax.report WORKDIR... [--baseline=WORKDIR] [--out=PREFIX] \
      [--curves_dir=DIR]

Reads WORKDIR/final_metrics.json and WORKDIR/config.json of each run (local
or gs:// paths). A WORKDIR holding no run but run subdirectories (a sweep's
--workdir_root) stands for all of them. Writes PREFIX.md and PREFIX.csv
(default: report.md / report.csv inside the WORKDIR given, a run or a sweep's
root; for several WORKDIRs, in their common parent; `--out=-` prints only)
and prints the Markdown table, followed by the ensembles (ensemble.json written by
alexnet_jax.ensemble) found in the WORKDIRs or one level below. Each run's
learning curves (train and validation top-1 error vs epoch from its TensorBoard
events, learning-rate drops marked) go to DIR/<run>.png (default PREFIX_curves).

What a run changed is read from its config, not from its name: the keys whose
values differ from the baseline run's (the run named `baseline`, else the
first). A run whose changes equal an entry of --sweep (default: the paper's
ablations) takes that entry's name and the paper's reported change. Deltas
compare 10-crop errors where a run has them, else single-crop errors, with
the baseline's 10-crop errors where it has them.
"""

import csv
import dataclasses
import io
import json
import os
from typing import Any, Mapping, Sequence

from absl import flags
from etils import epath

from alexnet_jax import cli
from alexnet_jax import progress
from alexnet_jax import sweep as sweep_lib

FLAGS = flags.FLAGS
METRICS = 'final_metrics.json'
CONFIG = 'config.json'


@dataclasses.dataclass
class Row:
  """One run in the table."""
  workdir: str
  name: str
  config: dict[str, Any]                 # flattened: 'model.lrn' -> False
  metrics: dict[str, Any] | None         # final_metrics.json, None if absent
  changes: dict[str, Any] = dataclasses.field(default_factory=dict)
  paper: dict[str, Any] | None = None
  delta: tuple[float | None, float | None] = (None, None)   # in % points


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def normalize(value: Any) -> Any:
  """A value as it reads back from JSON (tuples become lists)."""
  return json.loads(json.dumps(value))


def is_run(path: epath.Path) -> bool:
  return (path / METRICS).exists() or (path / CONFIG).exists()


def find_runs(workdirs: Sequence[str]) -> list[epath.Path]:
  """The run directories named by `workdirs` (or found one level below)."""
  runs = []
  for workdir in workdirs:
    path = epath.Path(workdir)
    if is_run(path):
      runs.append(path)
    elif path.is_dir():
      found = sorted(p for p in path.iterdir() if p.is_dir() and is_run(p))
      if not found:
        raise FileNotFoundError(f'No runs in {workdir}')
      runs.extend(found)
    else:
      raise FileNotFoundError(f'No run at {workdir}')
  return runs


def load_row(path: epath.Path) -> Row:
  read = lambda name: json.loads((path / name).read_text())
  config = flatten(read(CONFIG)) if (path / CONFIG).exists() else {}
  metrics = read(METRICS) if (path / METRICS).exists() else None
  if metrics:  # Runs written before the rename called the multi-crop errors eval10_*.
    metrics = {k.replace('eval10_', 'eval_multicrop_'): v for k, v in metrics.items()}
  return Row(workdir=os.fspath(path), name=path.name, config=config,
             metrics=metrics)


def diff(config: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
  """The keys of `config` whose values differ from `base` (with its values)."""
  keys = list(config) + [k for k in base if k not in config]
  return {k: config.get(k) for k in keys if config.get(k) != base.get(k)}


def matches(row: Row, overrides: Mapping[str, Any]) -> bool:
  """Whether `row` is the run of a sweep entry with these `overrides`.

  Its config holds them, and they account for all its changes (an override
  may repeat the base value: s = 2 of `no_overlap_pool`).
  """
  holds = all(k in row.config and normalize(row.config[k]) == v
              for k, v in overrides.items())
  return holds and set(row.changes) <= set(overrides)


def headline(metrics: Mapping[str, Any] | None):
  """(top-1, top-5, crops): multi-crop (10, or 5 without flips) errors where
  present, else single crop."""
  if not metrics:
    return None, None, None
  if metrics.get('eval_multicrop_top1_error') is not None:
    return (metrics['eval_multicrop_top1_error'], metrics.get('eval_multicrop_top5_error'),
            metrics.get('eval_multicrop_crops') or 10)
  return metrics.get('eval_top1_error'), metrics.get('eval_top5_error'), 1


def build(workdirs: Sequence[str], baseline: str | None = None,
          sweep_path: str | None = None) -> list[Row]:
  """The table's rows: baseline first, then in the sweep file's order."""
  rows = [load_row(p) for p in find_runs(workdirs)]
  if baseline:
    named = [r for r in rows if baseline.rstrip('/') in
             (r.name, r.workdir.rstrip('/'))]
    if not named:
      raise ValueError(f'--baseline {baseline} is none of the runs.')
    base = named[0]
  else:
    base = next((r for r in rows if r.name == sweep_lib.BASELINE_NAME), rows[0])

  entries, paper = [], {}
  if sweep_path:
    module = sweep_lib.load_sweep_module(sweep_path)
    entries = [(e.get('name'), normalize(sweep_lib.entry_overrides(e)))
               for e in module.get_sweep()]
    paper = getattr(module, 'PAPER', {})

  order = {}
  base_top1, base_top5, _ = headline(base.metrics)
  for row in rows:
    row.changes = diff(row.config, base.config)
    for i, (name, overrides) in enumerate(entries):
      # The reference is the paper's baseline if it is the sweep's `baseline`.
      if (row.name == name == sweep_lib.BASELINE_NAME if row is base else
          name and overrides and matches(row, overrides)):
        row.name, row.paper = name, paper.get(name)
        order[id(row)] = i
        break
    if row is not base:
      top1, top5, _ = headline(row.metrics)
      row.delta = tuple(
          None if a is None or b is None else 100 * (a - b)
          for a, b in ((top1, base_top1), (top5, base_top5)))
  rank = lambda r: (r is not base, order.get(id(r), len(entries)), r.name)
  return sorted(rows, key=rank)


# ------------------------------------------------------------------ tables


def _pct(x):
  return '' if x is None else f'{100 * x:.2f}'


def _signed(x, approx=False):
  return '–' if x is None else ('~' if approx else '') + f'{x:+.1f}'


def _pair(a, b):
  return '' if not a and not b else f'{a or "–"} / {b or "–"}'


def _changes(row: Row) -> str:
  if not row.changes:
    return '(none)'
  return ', '.join(f'{k}={sweep_lib.format_value(v)}'
                   for k, v in row.changes.items())


def markdown(rows: Sequence[Row]) -> str:
  """The table in Markdown, errors in % and deltas in percentage points."""
  head = ['run', 'changes vs baseline', 'step', '1 crop top-1 / top-5',
          '10 (5) crops top-1 / top-5', 'Δ top-1 / top-5', 'paper Δ top-1 / top-5',
          'notes']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for i, row in enumerate(rows):
    m = row.metrics or {}
    paper = row.paper or {}
    if i == 0:
      delta = '(reference)'
      ref = (f'{paper["top1"]} / {paper["top5"]} (error)' if paper else '')
    else:
      delta = _pair(*(None if d is None else f'{d:+.2f}' for d in row.delta))
      ref = (_pair(_signed(paper.get('top1'), paper.get('approx')),
                   _signed(paper.get('top5'), paper.get('approx')))
             if paper else '')
    note = paper.get('note', '') if paper else ''
    if row.metrics is None:
      note = ('no final_metrics.json (not finished?). ' + note).strip()
    cells = [row.name, _changes(row) if i else '(baseline)',
             str(m.get('step', '')),
             _pair(_pct(m.get('eval_top1_error')), _pct(m.get('eval_top5_error'))),
             _pair(_pct(m.get('eval_multicrop_top1_error')),
                   _pct(m.get('eval_multicrop_top5_error'))),
             delta, ref, note]
    lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
  legend = ('Errors in %, lower is better. Δ: change vs the first row in '
            'percentage points, on 10 crops (5 for runs trained without flips) where a run has them, else on 1 '
            "crop. Paper Δ: the paper's reported change on ILSVRC (first row: "
            "the paper's error).")
  return '\n'.join(lines) + '\n\n' + legend + '\n'


CSV_FIELDS = ('run', 'changes', 'workdir', 'step', 'eval_top1_error',
              'eval_top5_error', 'eval_multicrop_top1_error', 'eval_multicrop_top5_error',
              'eval_loss', 'train_loss', 'wall_time_s', 'delta_top1_pp',
              'delta_top5_pp', 'paper_top1', 'paper_top5', 'paper_note')


def to_csv(rows: Sequence[Row]) -> str:
  """The table as CSV: raw error fractions, deltas in percentage points."""
  out = io.StringIO()
  writer = csv.DictWriter(out, CSV_FIELDS, lineterminator='\n')
  writer.writeheader()
  for i, row in enumerate(rows):
    m, paper = row.metrics or {}, row.paper or {}
    writer.writerow({
        'run': row.name, 'changes': _changes(row) if i else '(baseline)',
        'workdir': row.workdir,
        **{k: m.get(k) for k in CSV_FIELDS[3:11]},
        **{f'delta_top{k}_pp': None if d is None else round(d, 4)
           for k, d in zip((1, 5), row.delta)},
        'paper_top1': paper.get('top1'), 'paper_top5': paper.get('top5'),
        'paper_note': paper.get('note')})
  return out.getvalue()


def default_out(workdirs: Sequence[str], rows: Sequence[Row]) -> str:
  """PREFIX of the files written without --out: inside the one WORKDIR given (a
  run or a sweep's root: ROOT/report.md, ROOT/report_curves/); for several,
  inside their common parent."""
  if len(workdirs) == 1:
    return workdirs[0].rstrip('/') + '/report'
  parents = {os.path.dirname(r.workdir.rstrip('/')) for r in rows}
  parent = parents.pop() if len(parents) == 1 else '.'
  return parent.rstrip('/') + '/report'


# ---------------------------------------------------------- learning curves


def read_scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value)]} from the TensorBoard event files in `workdir`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  scalars: dict[str, dict[int, float]] = {}
  for path in sorted(tf.io.gfile.glob(os.path.join(os.fspath(workdir), 'events.out.tfevents.*'))):
    try:
      for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        event = event_pb2.Event.FromString(record)
        for v in event.summary.value:
          value = (float(tf.make_ndarray(v.tensor)) if v.HasField('tensor')
                   else float(v.simple_value))
          scalars.setdefault(v.tag, {})[int(event.step)] = value  # A resume rewrites steps.
    except tf.errors.DataLossError:  # A run killed mid-write: keep what was read.
      pass
  return {tag: sorted(points.items()) for tag, points in scalars.items()}


def _steps_per_epoch(row: Row) -> int | None:
  try:
    from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    from alexnet_jax import predict  # pylint: disable=g-import-not-at-top
    config = predict.load_config(row.workdir)
    return input_pipeline.steps_per_epoch(
        input_pipeline.resolve(config).info.num_train, config.batch_size)
  except Exception:  # pylint: disable=broad-except
    return None      # The dataset is not here: plot against steps.


def lr_drops(lr: Sequence[tuple[int, float]]) -> list[float]:
  """Steps where the learning rate was divided, from its logged values.

  Each logged value is the mean over the steps since the previous log, so a
  drop shows as a run of decreasing values; its step is placed where the
  window's mean puts it (exact for one drop inside the window).
  """
  drops, i = [], 1
  while i < len(lr):
    if lr[i][1] < lr[i - 1][1] * 0.99:
      j = i
      while j + 1 < len(lr) and lr[j + 1][1] < lr[j][1] * 0.99:
        j += 1
      (s0, old), (s1, mean), new = lr[i - 1], lr[i], lr[j][1]
      drops.append(s0 + (s1 - s0) * (mean - new) / (old - new))
      i = j + 1
    else:
      i += 1
  return drops


def plot_curves(row: Row, path: str) -> str | None:
  """PNG of train and validation top-1 error vs epoch, learning-rate drops marked.

  Validation curves: `eval_top1_error` (centre crop) and the multi-crop one
  (`eval_multicrop_top1_error`, formerly `eval10_top1_error`). None if the run
  has no events.
  """
  scalars = read_scalars(row.workdir)
  if 'train_top1_error' not in scalars:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  spe = _steps_per_epoch(row)
  x = (lambda step: step / spe) if spe else (lambda step: step)
  fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
  curves = [('train_top1_error', 'train (mean over the logged steps)', '-'),
            ('eval_top1_error', 'validation, centre crop', 'o-')]
  multi = next((t for t in ('eval_multicrop_top1_error', 'eval10_top1_error')
                if t in scalars), None)
  if multi:
    curves.append((multi, 'validation, multi-crop', 's--'))
  for tag, label, style in curves:
    if tag in scalars:
      steps, values = zip(*scalars[tag])
      ax.plot([x(s) for s in steps], [100 * v for v in values], style, label=label, ms=3)
  drops = lr_drops(scalars.get('train_learning_rate', []))
  for i, s in enumerate(drops):
    ax.axvline(x(s), color='grey', ls=':', label='learning rate divided' if i == 0 else None)
  ax.set_xlabel('epoch' if spe else 'step')
  ax.set_ylabel('top-1 error (%)')
  ax.set_title(row.name)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return path


def ensembles_markdown(workdirs: Sequence[str]) -> str:
  """The ensembles (ensemble.json of alexnet_jax.ensemble) found in `workdirs`
  and their subdirectories, one line each."""
  from alexnet_jax import ensemble  # pylint: disable=g-import-not-at-top
  lines = []
  for path in ensemble.find_results(workdirs):
    r = json.loads(epath.Path(path).read_text())
    e, ms = r['ensemble'], r['members']
    mean = lambda k: 100 * sum(m[k] for m in ms) / len(ms)
    crops = 'centre' if r['crops'] == 'centre' else f'{r.get("num_crops", 10)} patches'
    lines.append(f'| {os.path.dirname(path)} | {e["models"]} | {crops} | '
                 f'{_pct(e["top1_error"])} / {_pct(e["top5_error"])} | '
                 f'{mean("top1_error"):.2f} / {mean("top5_error"):.2f} |')
  if not lines:
    return ''
  head = ['| ensemble | models | crops | ensemble top-1 / top-5 | mean member top-1 / top-5 |',
          '|---|---|---|---|---|']
  return '\n'.join(['', 'Ensembles (Table 2; error %):', ''] + head + lines) + '\n'


def define_flags():
  """Defines the command-line flags (when run as a program, not on import)."""
  flags.DEFINE_string(
      'baseline', None, 'The reference run (a WORKDIR or its name); default: '
      'the run named `baseline`, else the first.')
  flags.DEFINE_string(
      'sweep', 'configs/sweeps/paper_ablations.py',
      'Sweep file whose entries name the runs and whose PAPER dict gives the '
      "paper's numbers.")
  flags.DEFINE_string(
      'curves_dir', None, 'Writes one learning-curve PNG per run here; default: '
      "<OUT>_curves ('-': none).")
  flags.DEFINE_string(
      'out', None, 'Writes OUT.md and OUT.csv; default: WORKDIR/report (several '
      "WORKDIRs: <their common parent>/report); '-': print only.")


def main(argv: Sequence[str]) -> None:
  rows = build(argv[1:], FLAGS.baseline, FLAGS.sweep or None)
  table = markdown(rows) + ensembles_markdown(argv[1:])
  print(table, end='')
  out = FLAGS.out or default_out(argv[1:], rows)
  if out != '-':
    epath.Path(out + '.md').write_text(table)
    epath.Path(out + '.csv').write_text(to_csv(rows))
    print(f'\nWrote {out}.md and {out}.csv')
  curves_dir = FLAGS.curves_dir or (None if out == '-' else out + '_curves')
  if curves_dir and curves_dir != '-':
    meter = progress.Meter('report: learning curves', len(rows), 'runs')
    written = [p for r in meter.iterate(rows, lambda _: 1)
               if (p := plot_curves(r, os.path.join(curves_dir, f'{r.name}.png')))]
    print(f'Wrote {len(written)} learning curves to {curves_dir}/' if written
          else 'No TensorBoard events: no learning curves.')


if __name__ == '__main__':
  cli.run(main, define_flags, args='one or more WORKDIRs')
