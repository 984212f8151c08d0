"""The report: runs found, changes read from configs, deltas, paper columns."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from alexnet_jax import models
from alexnet_jax import report
from alexnet_jax import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_run(root, overrides, metrics, name=None):
  """A workdir as train_and_evaluate leaves it: config.json, final_metrics.json."""
  args = ['--config=configs/ilsvrc.py', '--workdir=x',
          *(f'--config.{k}={sweep.format_value(v)}' for k, v in overrides.items())]
  config, _ = sweep.parse_main_flags(args)
  # As train.setup records it: the model's own values written out.
  config.model.update(models.recorded_config(config.model, models.create_model(config.model)))
  workdir = os.path.join(root, name or sweep.run_dirname(overrides))
  os.makedirs(workdir)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  if metrics is not None:
    with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
      json.dump({'step': 1000, 'eval_loss': 1.0, 'train_loss': 0.5,
                 'wall_time_s': 60.0, 'eval_multicrop_top1_error': None,
                 'eval_multicrop_top5_error': None, **metrics}, f)
  return workdir


@pytest.fixture
def runs(tmp_path):
  root = str(tmp_path / 'ablations')
  ten = lambda t1, t5, c1, c5: dict(eval_top1_error=t1, eval_top5_error=t5,
                                    eval_multicrop_top1_error=c1, eval_multicrop_top5_error=c5)
  _fake_run(root, {'model.lrn': False}, ten(0.43, 0.21, 0.42, 0.20))
  _fake_run(root, {}, ten(0.42, 0.20, 0.407, 0.182))
  _fake_run(root, {'model.pool_window': 2, 'model.pool_stride': 2},
            ten(0.425, 0.205, 0.411, 0.185))
  _fake_run(root, {'eval.ten_crop': False},
            dict(eval_top1_error=0.421, eval_top5_error=0.199))
  _fake_run(root, {'model.towers': 1}, None)              # not finished
  _fake_run(root, {'seed': 1}, ten(0.5, 0.3, 0.5, 0.3))   # no paper entry
  return root


def test_rows_names_changes_and_deltas(runs):
  rows = report.build([runs], sweep_path='configs/sweeps/paper_ablations.py')
  by_name = {r.name: r for r in rows}
  assert [r.name for r in rows] == ['baseline', 'no_lrn', 'no_overlap_pool',
                                    'one_tower', 'single_crop', 'seed-1']
  assert by_name['no_lrn'].changes == {'model.lrn': False}
  # s = 2 is the base value: only the window changed.
  assert by_name['no_overlap_pool'].changes == {'model.pool_window': 2}
  assert by_name['seed-1'].changes == {'seed': 1}
  assert by_name['seed-1'].paper is None
  # 10-crop vs 10-crop, in percentage points.
  assert by_name['no_lrn'].delta == pytest.approx((1.3, 1.8))
  assert by_name['no_overlap_pool'].delta == pytest.approx((0.4, 0.3))
  # A single-crop run against the baseline's 10 crops.
  assert by_name['single_crop'].delta == pytest.approx((1.4, 1.7))
  assert by_name['one_tower'].metrics is None
  assert by_name['one_tower'].delta == (None, None)
  assert by_name['no_lrn'].paper['top1'] == 1.4


def test_markdown_and_csv(runs):
  rows = report.build([runs], sweep_path='configs/sweeps/paper_ablations.py')
  md = report.markdown(rows)
  lines = md.splitlines()
  assert lines[0].startswith('| run | changes vs baseline |')
  assert ('| baseline | (baseline) | 1000 | 42.00 / 20.00 | 40.70 / 18.20 | '
          '(reference) | 40.7 / 18.2 (error) |') in md
  assert ('| no_lrn | model.lrn=False | 1000 | 43.00 / 21.00 | 42.00 / 20.00 | '
          '+1.30 / +1.80 | +1.4 / +1.2 |') in md
  assert '| single_crop | eval.ten_crop=False | 1000 | 42.10 / 19.90 |  | ' in md
  assert 'no final_metrics.json' in md
  table = list(csv.DictReader(io.StringIO(report.to_csv(rows))))
  assert [r['run'] for r in table] == [r.name for r in rows]
  assert float(table[1]['delta_top1_pp']) == pytest.approx(1.3)
  assert table[1]['eval_multicrop_top1_error'] == '0.42'
  assert table[1]['paper_top1'] == '1.4'
  assert table[3]['step'] == ''   # one_tower: unfinished


def test_baseline_flag_and_explicit_workdirs(runs):
  rows = report.build([f'{runs}/model.lrn-False', f'{runs}/baseline'],
                      baseline='model.lrn-False',
                      sweep_path='configs/sweeps/paper_ablations.py')
  assert [r.name for r in rows] == ['model.lrn-False', 'baseline']
  assert rows[1].changes == {'model.lrn': True}
  assert rows[1].delta == pytest.approx((-1.3, -1.8))
  with pytest.raises(FileNotFoundError):
    report.build([f'{runs}/nope'])


def test_cli_writes_md_and_csv(runs):
  out = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.report', runs], cwd=ROOT,
      env={**os.environ, 'PYTHONPATH': ROOT}, check=True, capture_output=True,
      text=True).stdout
  with open(os.path.join(runs, 'report.md')) as f:
    assert f.read() in out
  assert os.path.exists(os.path.join(runs, 'report.csv'))


def test_runs_from_before_the_multicrop_rename_still_count(tmp_path):
  root = str(tmp_path / 'old')
  _fake_run(root, {}, dict(eval_top1_error=0.42, eval_top5_error=0.20))
  legacy = _fake_run(root, {'seed': 1}, dict(eval_top1_error=0.45, eval_top5_error=0.22))
  path = os.path.join(legacy, 'final_metrics.json')
  with open(path) as f:
    metrics = json.load(f)
  metrics.update(eval10_top1_error=0.43, eval10_top5_error=0.21)   # Old key names.
  with open(path, 'w') as f:
    json.dump(metrics, f)
  rows = report.build([root])
  assert rows[1].metrics['eval_multicrop_top1_error'] == 0.43
  assert rows[1].delta == pytest.approx((1.0, 1.0))   # Its 5/10 crops vs the baseline's 1.
