"""Test setup: 8 fake CPU devices (for sharding tests), quiet TensorFlow, no GPU."""

import os
import shutil
import sys
import tempfile

import pytest

# Must precede the first `import jax` anywhere in the test session.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One persistent compilation cache for the whole session: the xdist workers and
# every subprocess they start inherit it, so the tiny config's steps, which most
# tests share, compile once instead of once per run (the suite's largest cost
# after imports). Removed when the session ends (pytest_unconfigure).
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='alexnet_jax_test_jit_')
  os.environ['ALEXNET_JAX_TEST_CACHE_OWNER'] = str(os.getpid())
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


# --------------------------------------------------------------------------
# The one tiny config: the digits default with a narrow model and a short run
# --------------------------------------------------------------------------

TINY = {
    'model.conv_features': (8, 16, 24, 24, 16),
    'model.fc_features': 32,
    'batch_size': 32,
    'eval.batch_size': 128,       # 360 eval images: 2 full batches + 104.
    'eval.every_epochs': 0.25,    # 44 steps per epoch -> every 11 steps.
    'log_every_steps': 4,
    'checkpoint_every_steps': 4,
    'async_checkpoints': False,
}


def set_keys(config, overrides):
  """config with dotted keys set ('model.towers': 1), in place; returns it."""
  for key, value in overrides.items():
    target = config
    *path, leaf = key.split('.')
    for p in path:
      target = target[p]
    target[leaf] = value
  return config


def tiny_config(**overrides):
  """configs/digits.py with TINY, 12 steps, and `overrides` (dotted keys)."""
  from configs import digits  # pylint: disable=g-import-not-at-top
  return set_keys(digits.get_config(), {**TINY, 'num_train_steps': 12, **overrides})


def tiny_flags(**overrides) -> list:
  """TINY (and `overrides`) as main's --config.KEY=VALUE flags, on configs/digits.py."""
  return [f'--config.{k}={v}' for k, v in {**TINY, **overrides}.items()]


@pytest.fixture(scope='session')
def reference_run(tmp_path_factory):
  """One uninterrupted tiny_config run (12 steps, eval.ten_crop False; checkpoints
  8, 11, 12 kept): (workdir, final state, final_metrics.json). The tests that
  compare with it or read its checkpoints share it (test_faults, test_checksums,
  test_predict_faults: one run per test process instead of one per module and
  test); a test that changes the workdir works on a copy."""
  import json  # pylint: disable=g-import-not-at-top
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('reference_run')
  state = train.train_and_evaluate(tiny_config(**{'eval.ten_crop': False}), str(workdir))
  return workdir, state, json.loads((workdir / 'final_metrics.json').read_text())


def pytest_unconfigure(config):
  """The process that made the session's compilation cache removes it."""
  del config
  if os.environ.get('ALEXNET_JAX_TEST_CACHE_OWNER') == str(os.getpid()):
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)

