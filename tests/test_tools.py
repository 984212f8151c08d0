"""The tools around a trained run: predict, fine-tuning (init_from), ensembles.

One module-scoped fixture trains two short digits runs (seeds 0 and 1) in
process; the tests query them against independent references (the model
applied by hand, NumPy averages).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import input_pipeline
from alexnet_jax import models
from alexnet_jax import predict
from alexnet_jax import train
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digits_config(seed, **overrides):
  config = tiny_config(seed=seed, **overrides)
  config.eval.every_epochs = 100.0   # evaluate once, at the end
  config.eval.ten_crop = False
  return config


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('runs')
  for seed in (0, 1):
    train.train_and_evaluate(_digits_config(seed), str(root / f'seed{seed}'))
  return root


def _network_inputs(config, images, ten_crop=False):
  """uint8 eval pixels -> float64 network inputs, by hand in NumPy (section 4.1):
  the run's mean subtracted, the corner and centre patches of 76x76 images cut
  (digits: 5 patches, no reflections), the pixel scale applied."""
  assert config.input.resize_size == 76 and config.model.input_size == 67
  assert not config.input.flip and config.input.mean == 'channel'
  stats = predict.run_stats(config)
  x = images.astype(np.float64) - np.asarray(stats.mean, np.float64)  # (1, 1, 3) channel mean
  if ten_crop:
    x = np.stack([x[:, y:y + 67, z:z + 67] for y, z in ((0, 0), (0, 9), (9, 0), (9, 9), (4, 4))],
                 axis=1)
  return x * config.input.pixel_scale


def _softmax(logits):
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


@pytest.fixture(scope='module')
def digit_files(tmp_path_factory):
  """Four eval digits as real PNG files, named by their labels."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  d = datasets.load_digits()
  folder = tmp_path_factory.mktemp('digits')
  for i in range(len(d.target) - 4, len(d.target)):
    Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).save(
        folder / f'{i}_label{d.target[i]}.png')
  return folder


# --------------------------------------------------------------------------
# class names and predict
# --------------------------------------------------------------------------


def test_class_names_are_written_at_training_time(runs):
  names = json.loads((runs / 'seed0' / 'class_names.json').read_text())
  assert names == [str(i) for i in range(10)]


@pytest.mark.parametrize('ten_crop', [False, True])
def test_predict_matches_the_model_applied_by_hand(runs, digit_files, ten_crop):
  workdir = str(runs / 'seed0')
  result = predict.predict(workdir, [str(digit_files)], ten_crop=ten_crop)
  files = sorted(str(digit_files / f) for f in os.listdir(digit_files))
  assert result['files'] == files and result['step'] == 12
  # Reference: the saved parameters, the run's eval pixels finished in NumPy,
  # softmax by NumPy.
  config = predict.load_config(workdir)
  params, _, _ = ckpt_lib.load_params(workdir)
  images = predict.eval_images(config, files, ten_crop)
  assert images.dtype == np.uint8
  assert images.shape == ((4, 76, 76, 3) if ten_crop else (4, 67, 67, 3))
  x = _network_inputs(config, images, ten_crop).reshape((-1, 67, 67, 3)).astype(np.float32)
  model = models.create_model(config.model)
  logits = np.asarray(model.apply({'params': params}, x), np.float64)
  p = _softmax(logits).reshape(4, -1, 10).mean(1)
  for row, preds in zip(p, result['predictions']):
    order = np.argsort(-row)[:5]
    assert [d['class'] for d in preds] == order.tolist()
    assert [d['name'] for d in preds] == [str(c) for c in order]
    np.testing.assert_allclose([d['probability'] for d in preds], row[order], rtol=1e-4)


def test_predict_command_prints_top5_and_writes_json(runs, digit_files, tmp_path):
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  out = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.predict', f'--workdir={runs / "seed0"}',
       '--checkpoint=best', f'--output_dir={tmp_path}', str(digit_files)],
      capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(
          os.path.abspath(__file__))), env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.stdout.count('  5. ') == 4, out.stdout
  saved = json.loads((tmp_path / 'predictions.json').read_text())
  assert saved['checkpoint'] == 'best' and len(saved['predictions']) == 4


def test_predict_names_a_missing_file(runs):
  with pytest.raises(FileNotFoundError, match='nope.png'):
    predict.predict(str(runs / 'seed0'), ['/nonexistent/nope.png'])


# --------------------------------------------------------------------------
# init_from: fine-tuning from another run
# --------------------------------------------------------------------------


def _tree(**layers):
  return {k: {'kernel': np.full(s, v, np.float32), 'bias': np.full(s[-1:], v, np.float32)}
          for k, (s, v) in layers.items()}


def test_merge_params_takes_saved_layers_and_reinitializes_named_ones():
  fresh = _tree(conv1=((3, 4), 0.0), fc8=((4, 5), 0.0))
  loaded = _tree(conv1=((3, 4), 1.0), fc8=((4, 10), 1.0))
  merged = ckpt_lib.merge_params(fresh, loaded, ('fc8',))
  assert (merged['conv1']['kernel'] == 1).all() and (merged['fc8']['kernel'] == 0).all()
  with pytest.raises(ckpt_lib.CheckpointMismatchError,
                     match=r"(?s)fc8.*checkpoint \[4, 10\] vs model \[4, 5\].*init_reinit"):
    ckpt_lib.merge_params(fresh, loaded)
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match='not layers of this model'):
    ckpt_lib.merge_params(fresh, loaded, ('fc9',))


def test_init_from_a_missing_checkpoint_is_named(tmp_path):
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match='init_from: No checkpoint in .*nope'):
    train.init_params_from(str(tmp_path / 'nope'), (), _tree(conv1=((3, 4), 0.0)))


def test_init_from_starts_from_the_runs_params_and_resumes_its_own(runs, tmp_path):
  source = str(runs / 'seed0')
  # lr ~ 0: the one step keeps the parameters, so they show where the run started.
  config = _digits_config(1, num_train_steps=1, init_from=source, init_reinit=('fc8',))
  config.optimizer.learning_rate = 1e-12
  train.train_and_evaluate(config, str(tmp_path / 'ft'))
  got, _, step = ckpt_lib.load_params(str(tmp_path / 'ft'))
  want, _, _ = ckpt_lib.load_params(source)
  assert step == 1
  for layer in want:
    same = np.allclose(got[layer]['kernel'], want[layer]['kernel'], atol=1e-6)
    assert same == (layer != 'fc8'), layer
  # Run again (it is finished: restore and re-evaluate), now naming another
  # init_from: the run restores its own checkpoint, init_from is not applied.
  config.init_from = str(runs / 'seed1')
  state = train.train_and_evaluate(config, str(tmp_path / 'ft'))
  assert int(state.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), got)


# --------------------------------------------------------------------------
# Ensembles (Table 2) and the report's ensembles and learning curves
# --------------------------------------------------------------------------


def test_ensemble_averages_the_members_softmax(runs, tmp_path):
  from alexnet_jax import ensemble  # pylint: disable=g-import-not-at-top
  workdirs = [str(runs / 'seed0'), str(runs / 'seed1')]
  result = ensemble.evaluate(workdirs)
  # Reference: each member on the 360 eval digits, softmax averaged by NumPy.
  probs = []
  for w in workdirs:
    run = predict.load_run(w)
    images, labels = [], []
    for batch in input_pipeline.eval_iterator(input_pipeline.resolve(run.config), batch_size=128):
      images.append(batch['image'][batch['mask']])
      labels.append(batch['label'][batch['mask']])
    x = _network_inputs(run.config, np.concatenate(images)).astype(np.float32)
    probs.append(_softmax(np.asarray(run.model.apply({'params': run.params}, x), np.float64)))
  labels = np.concatenate(labels)
  error = lambda p: float(np.mean(p.argmax(-1) != labels))
  assert result['num_images'] == 360
  for w, m, p in zip(workdirs, result['members'], probs):
    assert m['top1_error'] == pytest.approx(error(p), abs=1e-9)
    # The same number as the run's own last evaluation (steps.eval_step).
    final = json.loads(open(os.path.join(w, 'final_metrics.json')).read())
    assert m['top1_error'] == pytest.approx(final['eval_top1_error'], abs=1e-6)
  assert result['ensemble']['top1_error'] == pytest.approx(error(sum(probs) / 2), abs=1e-9)
  table = ensemble.markdown(result)
  # The paper's 10-patch numbers in a table of their own, not under the members' crops.
  paper = table.split("The paper's Table 2 (ILSVRC-2012 validation, ten patches", 1)[1]
  assert '| 5 CNNs | 38.1 | 16.4 |' in paper and '| 38.1 | 16.4 |' not in table.split(paper)[0]
  ensemble.write(result, str(tmp_path / 'ens'))
  assert ensemble.find_results([str(tmp_path)]) == [str(tmp_path / 'ens' / 'ensemble.json')]


def test_ensemble_refuses_members_of_different_datasets(runs, tmp_path):
  from alexnet_jax import ensemble  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  other = tmp_path / 'other'
  shutil.copytree(runs / 'seed1', other)
  config = json.loads((other / 'config.json').read_text())
  config['dataset']['source'] = 'folder'
  config['input']['mean'] = 'none'  # no folder to compute its statistics from
  (other / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ValueError, match='one dataset'):
    ensemble.evaluate([str(runs / 'seed0'), str(other)])


def test_report_lists_ensembles_and_draws_learning_curves(runs, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  from alexnet_jax import report  # pylint: disable=g-import-not-at-top
  sweep = tmp_path / 'sweep'
  for name in ('seed0', 'seed1'):
    shutil.copytree(runs / name, sweep / name)
  (sweep / 'ens').mkdir()
  (sweep / 'ens' / 'ensemble.json').write_text(json.dumps({
      'crops': 'centre', 'ensemble': {'models': 2, 'top1_error': 0.25, 'top5_error': 0.05},
      'members': [{'top1_error': 0.3, 'top5_error': 0.1}, {'top1_error': 0.4, 'top5_error': 0.0}]}))
  text = report.ensembles_markdown([str(sweep)])
  assert f'| {sweep / "ens"} | 2 | centre | 25.00 / 5.00 | 35.00 / 5.00 |' in text
  scalars = report.read_scalars(str(sweep / 'seed0'))
  # tiny_config logs every 4 steps and evaluates at the end (step 12).
  assert [s for s, _ in scalars['train_top1_error']] == [4, 8, 12]
  assert [s for s, _ in scalars['eval_top1_error']] == [12]
  # A drop at step 440 inside the log window (400, 450]; one at a log boundary (600).
  lr = [(400, 0.01), (450, 0.0082), (500, 0.001), (550, 0.001), (600, 0.001), (650, 0.0001)]
  assert np.allclose(report.lr_drops(lr), [440, 600])
  row = report.load_row(sweep / 'seed0')
  png = report.plot_curves(row, str(tmp_path / 'curves' / 'seed0.png'))
  with Image.open(png) as im:
    assert im.size == (600, 360)


# --------------------------------------------------------------------------
# Figures 1, 3 and 4
# --------------------------------------------------------------------------


def test_fig3_lays_out_each_towers_kernels_on_its_own_rows(runs, tmp_path):
  from alexnet_jax import figures  # pylint: disable=g-import-not-at-top
  kernel = np.random.default_rng(0).normal(size=(11, 11, 3, 96))
  mosaic = figures.kernel_mosaic(kernel, towers=2, cols=16)
  # 3 rows of 16 per tower, 1 px gaps, 4 px between the towers.
  assert mosaic.shape == (2 * 3 * 12 + 4, 16 * 12, 3)
  for c, (y, x) in {0: (0, 0), 17: (12, 12), 47: (24, 180), 48: (40, 0), 95: (64, 180)}.items():
    k = kernel[..., c]
    np.testing.assert_allclose(mosaic[y:y + 11, x:x + 11], (k - k.min()) / (k.max() - k.min()))
  result = figures.fig3(str(runs / 'seed0'), str(tmp_path))
  assert result['towers'] == 2 and result['kernels'] == 8
  with Image.open(result['png']) as im:
    assert im.size[0] >= 400


def test_fig4_neighbours_are_nearest_in_fc7_after_relu(runs, tmp_path):
  from alexnet_jax import figures  # pylint: disable=g-import-not-at-top
  run = predict.load_run(str(runs / 'seed0'))
  images, labels = figures.train_images(run.config, 100)
  assert images.shape == (64, 67, 67, 3)  # whole batches of the training order
  assert images.dtype == np.uint8
  # Independent route to fc7 after ReLU: pool5 (sown) through fc6, fc7 in NumPy.
  x = _network_inputs(run.config, images).astype(np.float32)
  _, state = run.model.apply({'params': run.params}, x, mutable=['intermediates'])
  x = np.asarray(state['intermediates']['pool5'][0], np.float64).reshape(len(images), -1)
  p = {k: {n: np.asarray(v, np.float64) for n, v in run.params[k].items()} for k in ('fc6', 'fc7')}
  x = np.maximum(x @ p['fc6']['kernel'] + p['fc6']['bias'], 0)
  want = np.maximum(x @ p['fc7']['kernel'] + p['fc7']['bias'], 0)
  got = figures.last_hidden(run, images)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
  idx, dist = figures.nearest(got[:3], got, 4)
  assert (idx[:, 0] == np.arange(3)).all() and np.allclose(dist[:, 0], 0, atol=1e-3)
  brute = np.linalg.norm(want[:3, None] - want[None], axis=-1)
  np.testing.assert_allclose(dist, np.sort(brute, 1)[:, :4], rtol=1e-3, atol=1e-3)
  result = figures.fig4(str(runs / 'seed0'), str(tmp_path), num_queries=2, neighbours=3,
                        num_train=100)
  saved = json.loads((tmp_path / 'fig4.json').read_text())
  assert [len(q['neighbours']) for q in saved['queries']] == [3, 3]
  assert len(saved['queries'][0]['top5']) == 5 and saved['layer'] == 'fc7'
  assert os.path.getsize(result['png']) > 5000


def test_first_epoch_below():
  """fig1's reading of a curve (the whole command: test_first_contact.py)."""
  from alexnet_jax import figures  # pylint: disable=g-import-not-at-top
  assert figures.first_epoch_below([(1, 0.5), (2, 0.25), (3, 0.1)], 0.25) == 2
  assert figures.first_epoch_below([(1, 0.5)], 0.25) is None


@pytest.mark.parametrize('module,flag', [('predict', '--ten_crop'), ('figures', '--train_images'),
                                         ('ensemble', '--workdirs'), ('report', '--curves_dir')])
def test_commands_have_help(module, flag):
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, '-m', f'alexnet_jax.{module}', '--help'],
                       capture_output=True, text=True, cwd=root)
  assert flag in out.stdout, out.stdout + out.stderr


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
  """The tools (cli.run) answer a user's mistake with one ERROR line, status 1."""
  from alexnet_jax import cli

  def missing(argv):
    del argv
    raise FileNotFoundError(f'No checkpoint in {tmp_path / "nowhere"}.')
  with pytest.raises(SystemExit) as e:
    cli.guarded(missing)(['prog'])
  assert e.value.code == 1
  assert capsys.readouterr().err == f'ERROR: No checkpoint in {tmp_path / "nowhere"}.\n'

  def bug(argv):
    del argv
    raise KeyError('a bug keeps its traceback')
  with pytest.raises(KeyError):
    cli.guarded(bug)(['prog'])

  image = tmp_path / 'a.png'
  image.write_bytes(b'not used')
  r = subprocess.run([sys.executable, '-m', 'alexnet_jax.predict',
                      f'--workdir={tmp_path / "no_run"}', str(image)],
                     capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert r.returncode == 1, r.stderr
  assert 'Traceback' not in r.stderr
  assert 'ERROR:' in r.stderr and 'no_run' in r.stderr
