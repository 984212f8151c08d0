"""Training loop: the paper's optimizer, schedules, resume, errors."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import data_sources
from alexnet_jax import input_pipeline
from alexnet_jax import optimizer
from alexnet_jax import stats as stats_lib
from alexnet_jax import steps
from alexnet_jax import train
from tests.conftest import tiny_config, tiny_flags
from configs import ilsvrc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------
# Optimizer: the paper's update rule (section 5), by hand in NumPy
# --------------------------------------------------------------------------


def _opt_config(rule='paper', weight_decay_on='all'):
  config = ilsvrc.get_config()
  config.schedule.name = 'step'
  config.schedule.step_epochs = (2,)     # eps 0.01 for steps 0, 1; 0.001 for step 2.
  config.optimizer.rule = rule
  config.optimizer.weight_decay_on = weight_decay_on
  config.num_epochs = 3
  return config


def _run_three_steps(config, params, grads):
  tx = optimizer.make_optimizer(
      optimizer.Hyper(**config.optimizer), optimizer.Schedule(**config.schedule), 1,
      optimizer.total_steps(config.num_train_steps, config.num_epochs, 1))
  state = tx.init(params)
  lrs = []
  for g in grads:
    updates, state = tx.update(g, state, params)
    lrs.append(float(optimizer.current_learning_rate(state)))
    params = optax.apply_updates(params, updates)
  return params, lrs


def _numpy_paper_rule(w, grads, eps, mom=0.9, wd=5e-4, decay=None):
  """v <- 0.9 v - 0.0005 eps w - eps g;  w <- w + v   (section 5, eq. 1-2), float64."""
  w = {k: np.asarray(v, np.float64) for k, v in w.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  for g, e in zip(grads, eps):
    for k in w:
      d = wd if (decay is None or decay[k]) else 0.0
      v[k] = mom * v[k] - d * e * w[k] - e * np.asarray(g[k], np.float64)
      w[k] = w[k] + v[k]
  return w


def _problem():
  rng = np.random.default_rng(0)
  params = {'kernel': jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
            'bias': jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
  grads = [{k: jnp.asarray(rng.normal(size=v.shape), jnp.float32) for k, v in params.items()}
           for _ in range(3)]
  return params, grads


def test_three_steps_with_lr_drop_equal_paper_rule():
  params, grads = _problem()
  got, lrs = _run_three_steps(_opt_config(), params, grads)
  np.testing.assert_allclose(lrs, [0.01, 0.01, 0.001], rtol=1e-6)
  want = _numpy_paper_rule(params, grads, eps=[0.01, 0.01, 0.001])
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)


def test_trace_then_scale_differs_after_the_drop():
  """optax.sgd's order rescales the accumulated velocity when eps drops."""
  params, grads = _problem()
  paper, _ = _run_three_steps(_opt_config('paper'), params, grads)
  other, _ = _run_three_steps(_opt_config('trace_then_scale'), params, grads)
  diff = np.abs(np.asarray(paper['kernel']) - np.asarray(other['kernel'])).max()
  assert diff > 1e-4
  # With a constant eps the two orders are the same function.
  params2, _ = _run_three_steps(_opt_config('paper'), params, grads[:2])
  other2, _ = _run_three_steps(_opt_config('trace_then_scale'), params, grads[:2])
  np.testing.assert_allclose(params2['kernel'], other2['kernel'], rtol=1e-6)


def test_weight_decay_on_kernels_only():
  params, grads = _problem()
  got, _ = _run_three_steps(_opt_config(weight_decay_on='kernels'), params, grads)
  want = _numpy_paper_rule(params, grads, eps=[0.01, 0.01, 0.001],
                           decay={'kernel': True, 'bias': False})
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)


def test_unknown_optimizer_rule_is_refused():
  config = _opt_config(rule='adam')
  with pytest.raises(ValueError, match='optimizer.rule'):
    optimizer.make_optimizer(
        optimizer.Hyper(**config.optimizer), optimizer.Schedule(**config.schedule), 10, 10)


def test_plateau_divides_after_patience_at_most_max_drops():
  s = ilsvrc.get_config().schedule
  s.patience, s.min_delta, s.max_drops = 2, 0.0, 3
  plateau = {'best': np.inf, 'bad_evals': 0, 'drops': 0}
  drops = []
  for err in [0.5, 0.4, 0.4, 0.4, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]:
    plateau, drop = optimizer.plateau_update(plateau, err, s)
    drops.append(drop)
  # Improvements at 0.5, 0.4, 0.3 reset patience; then two flat evals -> a drop.
  assert [i for i, d in enumerate(drops) if d] == [3, 6, 8]
  assert int(plateau['drops']) == 3


def test_cosine_and_warmup_schedules():
  config = ilsvrc.get_config()
  config.schedule.name = 'cosine'
  config.schedule.warmup_epochs = 1.0
  config.num_epochs = 3
  fn = optimizer.learning_rate_schedule(
      optimizer.Hyper(**config.optimizer), optimizer.Schedule(**config.schedule), 10,
      optimizer.total_steps(config.num_train_steps, config.num_epochs, 10))
  assert float(fn(0)) == 0.0
  np.testing.assert_allclose(float(fn(10)), 0.01, rtol=1e-6)
  assert float(fn(29)) < 1e-4


def test_topk_errors():
  scores = jnp.array([[0.1, 0.5, 0.2, 0.0, 0.05, 0.15], [0.9, 0.0, 0.02, 0.03, 0.04, 0.01]])
  top1, top5 = steps.topk_errors(scores, jnp.array([1, 1]))
  np.testing.assert_array_equal(top1, [0.0, 1.0])
  np.testing.assert_array_equal(top5, [0.0, 1.0])   # class 1 is the 6th of 6 for row 2.


# --------------------------------------------------------------------------
# The loop on the digits default
# --------------------------------------------------------------------------


def test_train_and_evaluate_writes_metrics_and_counts_eval_once(tmp_path, monkeypatch):
  config = tiny_config()
  resolved = []  # input statistics: resolved once per run, not per evaluation
  for_settings = stats_lib.for_settings
  monkeypatch.setattr(stats_lib, 'for_settings',
                      lambda *a, **k: resolved.append(1) or for_settings(*a, **k))
  sources = []  # the data source too: once per run, not per iterator or evaluation
  source_for = data_sources.for_dataset
  monkeypatch.setattr(data_sources, 'for_dataset',
                      lambda *a, **k: sources.append(1) or source_for(*a, **k))
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 12 and len(resolved) == 1 and len(sources) == 1
  final = json.loads((tmp_path / 'final_metrics.json').read_text())
  assert final['step'] == 12
  for k in ('eval_top1_error', 'eval_top5_error', 'eval_multicrop_top1_error', 'train_loss',
            'train_images_per_second', 'train_l2_grads'):
    assert np.isfinite(final[k]), k
  assert json.loads((tmp_path / 'config.json').read_text())['model']['fc_features'] == 32
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path))
  # Eval counts each of the 360 digits once despite the padded last batch.
  run = train.setup(config, input_pipeline.resolve(config))
  m = train.evaluate(run, state.params, ten_crop=False)
  assert m['count'] == 360
  np.testing.assert_allclose(m['top1_error'], final['eval_top1_error'], rtol=1e-6)


def _main(workdir, *overrides, env=None):
  cmd = [sys.executable, '-m', 'alexnet_jax.main', f'--workdir={workdir}', *overrides]
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env or dict(os.environ, PYTHONPATH=ROOT))


TINY_FLAGS = tiny_flags(log_every_steps=1, checkpoint_every_steps=5)


# SIGTERM/SIGINT/kill -9 and resume: tests/test_faults.py.


def test_checkpoint_from_another_config_is_refused(tmp_path):
  train.train_and_evaluate(tiny_config(num_train_steps=4), str(tmp_path))
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match='model.towers'):
    train.train_and_evaluate(tiny_config(**{'num_train_steps': 8, 'model.towers': 1}),
                             str(tmp_path))


# A non-finite loss stops the run naming its step: tests/test_health_alarm.py.


def test_bogus_config_key_exits_nonzero_naming_it(tmp_path):
  proc = _main(tmp_path, '--config.bogus=1')
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode != 0
  assert 'bogus' in out


def test_missing_dataset_exits_nonzero_with_preparation_steps(tmp_path):
  proc = _main(tmp_path / 'w', '--config=configs/ilsvrc.py',
               f'--config.dataset.data_dir={tmp_path / "tfds"}')
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode != 0
  assert 'imagenet2012' in out and 'ILSVRC2012_img_train.tar' in out, out
