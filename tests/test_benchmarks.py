"""benchmarks/train_step.py: a smoke run, and the step is the paper's computation.

Two checks of the step itself, on the tiny preset (the paper's topology with
few maps, so they run in seconds; He init, under which its gradients do not
vanish as under the paper's N(0, 0.01^2)): one against the same network in PyTorch
(needs torch, `pip install -r benchmarks/requirements.txt`), one against the
float64 NumPy reference of tests/numpy_alexnet.py (needs nothing more).
"""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from alexnet_jax import steps
from benchmarks import train_step as bench
from tests import numpy_alexnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _has_torch() -> bool:
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    return True
  except ImportError:
    return False


@pytest.mark.slow
def test_smoke_run_writes_table_and_json(tmp_path):
  out = tmp_path / 'train_step.json'
  impls = 'jax,torch_eager' if _has_torch() else 'jax'
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', 'train_step.py'), '--model=alexnet_tiny',
       '--batch_sizes=2', '--steps=1', '--warmup=1', f'--impls={impls}', f'--output={out}'],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'img/s' in proc.stdout and 'ours/this' in proc.stdout
  result = json.loads(out.read_text())
  rows = {r['impl']: r for r in result['rows']}
  assert set(rows) == set(impls.split(','))
  for row in rows.values():
    assert row['img_per_s'] > 0 and row['step_s'] > 0 and row['peak_bytes'] > 0
    assert np.isfinite(row['loss'])
    assert row['mfu'] is None  # No peak FLOP/s is known for a CPU.
  assert result['flops_per_image'] > 0
  assert rows['jax']['settings']['compiler_options'] == steps.step_compiler_options()
  if 'torch_eager' in rows:
    assert rows['torch_eager']['ours_over_this'] == pytest.approx(
        rows['jax']['img_per_s'] / rows['torch_eager']['img_per_s'])


def test_peak_flops_table():
  assert bench.peak_tflops('NVIDIA H100 80GB HBM3', 'bfloat16', 'tf32') == 989.4
  assert bench.peak_tflops('NVIDIA H100 80GB HBM3', 'float32', 'tf32') == 494.7
  assert bench.peak_tflops('NVIDIA H100 80GB HBM3', 'float32', 'highest') == 66.9
  assert bench.peak_tflops('NVIDIA H100 PCIe', 'bfloat16', 'tf32') == 756.0
  assert bench.peak_tflops('NVIDIA H200', 'bfloat16', 'tf32') == 989.4
  assert bench.peak_tflops('cpu', 'float32', 'tf32') is None


def test_one_step_equals_pytorch():
  pytest.importorskip('torch')
  result = bench.check('alexnet_tiny', batch=4, kernel_init='he')
  assert bench.check_passes(result), bench.format_check(result)


def test_check_tells_the_paper_rule_from_trace_then_scale():
  pytest.importorskip('torch')
  result = bench.check('alexnet_tiny', batch=4, rule='trace_then_scale', kernel_init='he')
  assert not bench.check_passes(result)


def _numpy_loss(params, images, labels):
  logits = numpy_alexnet.alexnet(params, images)
  m = logits.max(-1, keepdims=True)
  logz = m[:, 0] + np.log(np.exp(logits - m).sum(-1))
  return float(np.mean(logz - logits[np.arange(len(labels)), labels]))


def test_one_step_equals_float64_numpy_paper_rule():
  """Loss and update of the jitted step against float64 NumPy, without torch.

  The update must be v1 = m v0 - wd eps w - eps g (w += v1), so
  eps g = m v0 - wd eps w - (w1 - w); its projection on a random direction d of
  each parameter must equal eps times the central difference of the NumPy
  reference's loss along d.
  """
  with jax.default_matmul_precision('highest'):
    # bias_init=1.0: the model this check was written for (AlexNet's default
    # became the recipe's 0.1 when the defaults moved into models.py).
    config, model, tx, options = bench.jax_setup('alexnet_tiny', 'float32', 'highest',
                                                 dropout=False, kernel_init='he', bias_init=1.0)
    state = steps.create_train_state(jax.random.PRNGKey(0), model, tx)
    rng = np.random.default_rng(0)
    v0 = jax.tree.map(lambda p: (1e-4 * rng.standard_normal(p.shape)).astype(np.float32),
                      state.params)
    state = state.replace(opt_state=jax.tree_util.tree_map_with_path(
        functools.partial(lambda path, x: bench.velocity_leaf(path, v0, x)), state.opt_state))
    images, labels = bench.synthetic_batch(2, model.input_size, model.num_classes)
    w0 = jax.tree.map(lambda a: np.asarray(a, np.float64), jax.device_get(state.params))
    new_state, metrics = bench.jax_step_fn(model, tx, options)(
        state, {'image': images, 'label': labels})
  w1 = jax.tree.map(lambda a: np.asarray(a, np.float64), jax.device_get(new_state.params))
  o = config.optimizer
  np.testing.assert_allclose(float(metrics['loss']), _numpy_loss(w0, images, labels), rtol=1e-5)
  for layer in w0:
    for name in w0[layer]:
      w = w0[layer][name]
      d = rng.standard_normal(w.shape)
      # Weight decay on the weights (kernels) only: weight_decay_on='kernels'.
      wd = o.weight_decay if name == 'kernel' or o.weight_decay_on == 'all' else 0.0
      eps_g = (o.momentum * np.asarray(v0[layer][name], np.float64)
               - wd * o.learning_rate * w - (w1[layer][name] - w))
      h = 1e-6 * max(np.abs(w).max(), 1e-2) / np.abs(d).max()
      plus, minus = jax.tree.map(np.copy, w0), jax.tree.map(np.copy, w0)
      plus[layer][name] = w + h * d
      minus[layer][name] = w - h * d
      fd = (_numpy_loss(plus, images, labels) - _numpy_loss(minus, images, labels)) / (2 * h)
      # w1 is float32: its rounding (uniform, std ulp / sqrt(12)) limits how
      # well eps g is known; allow 6 standard deviations of it.
      ulp = np.spacing(np.abs(w1[layer][name]).astype(np.float32)).astype(np.float64)
      rounding = 6 * np.sqrt(np.sum((d * ulp) ** 2) / 12)
      np.testing.assert_allclose(np.sum(eps_g * d), o.learning_rate * fd, rtol=1e-4,
                                 atol=rounding, err_msg=f'{layer}/{name}')


@pytest.mark.slow
def test_input_pipeline_benchmark_prepared_rows(tmp_path):
  """benchmarks/input_pipeline.py prepares JPEGs made here, raw and JPEG, and
  reports the interface's keys (the on-the-fly row shares the row code and
  is left out: two TensorFlow processes fewer)."""
  from tests import ilsvrc_fixtures as fx  # pylint: disable=g-import-not-at-top
  data = tmp_path / 'jpegs'
  data.mkdir()
  rng = np.random.default_rng(0)
  for i in range(8):
    (data / f'n0000000{i % 2}_{i}.JPEG').write_bytes(
        fx.jpeg_bytes(fx.smooth_image(rng, 300 + 10 * i, 280)))
  out = tmp_path / 'input_pipeline.json'
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', 'input_pipeline.py'),
       f'--data={data}', '--pipelines=raw,prepared', '--cores=1', '--rounds=1', '--passes=1',
       '--repeat=1', '--batch=4', f'--output={out}'],
      capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count('Wrote 8 images') == 2  # the prepare commands' own reports
  raw, row = json.loads(out.read_text())['rows']
  assert raw['key'] == 'raw' and raw['stored_bytes_per_image'] == 256 * 256 * 3
  assert raw['vs_prepared_per_cpu_second'] == raw['img_per_cpu_second'] / row['img_per_cpu_second']
  assert raw['cores_per_gpu_at_100k'] == 100_000 / raw['img_per_cpu_second']
  assert row['key'] == 'prepared' and row['img_per_cpu_second'] > 0
  assert row['decode_only_img_per_cpu_second'] > 0 and row['stored_bytes_per_image'] > 0
  assert row['vs_decode_only_per_cpu_second'] == (
      row['img_per_cpu_second'] / row['decode_only_img_per_cpu_second'])
  # One training example as the iterator yields it: a 227x227x3 image and a label.
  for r in (raw, row):
    assert r['bytes_per_image'] >= 227 * 227 * 3 + 4
