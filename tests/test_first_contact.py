"""First contact (issue 20, items 4-11): what a new user meets, through the real
commands in subprocesses: where report writes, progress with an ETA, a missing
PyTorch, the crops predict names, the offline message of the download configs,
quiet prepare workers, the source the statistics name, the README's own-images
command. A mistake is one ERROR line, its exit status, and nothing written.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from alexnet_jax import progress
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(module, *args, site=None, timeout=300):
  """`python -m alexnet_jax.MODULE ARGS` from the repository root; `site`: a
  directory whose sitecustomize.py runs first (a simulated environment)."""
  path = os.pathsep.join(([str(site)] if site else []) + [ROOT])
  return subprocess.run([sys.executable, '-m', f'alexnet_jax.{module}', *map(str, args)],
                        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, 'PYTHONPATH': path,
                             'XLA_FLAGS': '--xla_force_host_platform_device_count=1'})


def _site(tmp_path, code):
  """A directory with sitecustomize.py = `code`, for _tool(site=...)."""
  site = tmp_path / 'site'
  site.mkdir()
  (site / 'sitecustomize.py').write_text(code)
  return site


def _one_error(out, status):
  """The command failed with `status` and one ERROR line, no traceback."""
  assert out.returncode == status, out.stdout + out.stderr
  log = out.stdout + out.stderr
  assert 'Traceback' not in log, log
  assert sum(line.startswith('ERROR:') for line in log.splitlines()) == 1, log
  return out.stderr[out.stderr.index('ERROR:'):]


def _jpegs(root, splits=(('train', 4), ('val', 2)), classes=('cat', 'dog')):
  """ROOT/<split>/<class>/<i>.jpg: small noisy JPEGs of one colour per class."""
  rng = np.random.default_rng(0)
  for split, n in splits:
    for c, colour in zip(classes, ((200, 80, 40), (40, 90, 200))):
      os.makedirs(root / split / c, exist_ok=True)
      for i in range(n):
        pixels = np.clip(rng.normal(colour, 40, (60, 80, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / split / c / f'{i}.jpg', quality=90)
  return root


# ------------------------------------------------- item 4: report writes in ROOT


def test_report_of_a_run_directory_writes_inside_it(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  run = tmp_path / 'parent' / 'run1'
  run.mkdir(parents=True)
  (run / 'config.json').write_text(json.dumps({'dataset': {'source': 'digits', 'name': 'digits'},
                                               'batch_size': 64}))
  (run / 'final_metrics.json').write_text(json.dumps(
      {'step': 44, 'eval_top1_error': 0.1, 'eval_top5_error': 0.01}))
  writer = tf.summary.create_file_writer(str(run))
  with writer.as_default():
    for step in (22, 44):
      tf.summary.scalar('train_top1_error', 0.5 / step, step=step)
  writer.close()
  out = _tool('report', run)
  assert out.returncode == 0, out.stderr
  assert f'Wrote {run}/report.md and {run}/report.csv' in out.stdout, out.stdout
  assert f'Wrote 1 learning curves to {run}/report_curves/' in out.stdout, out.stdout
  assert (run / 'report_curves' / 'run1.png').exists() and (run / 'report.csv').exists()
  assert os.listdir(tmp_path / 'parent') == ['run1']   # nothing beside the run


# ---------------------------------------------- item 5: progress with an ETA


def test_meter_is_quiet_for_short_jobs_and_gives_an_eta_for_long_ones(monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(progress.time, 'monotonic', lambda: clock[0])
  lines = []
  quick = progress.Meter('quick', 100, every_s=10, quiet_below_s=10, out=lines.append)
  for _ in range(10):
    clock[0] += 0.05
    quick.update(10)                    # 0.5 s in all: no line
  warm = progress.Meter('warm', 1000, every_s=10, quiet_below_s=10, out=lines.append)
  clock[0] += 1.0
  warm.update(64)                     # start-up in the first batch: 15 s projected,
  for _ in range(14):                 # but only 1 s seen; the rest takes 0.3 s
    clock[0] += 0.02
    warm.update(67)
  assert lines == []
  slow = progress.Meter('stats', 1000, every_s=10, quiet_below_s=10, out=lines.append)
  clock[0] += 2.0
  slow.update(100)                      # 20 s projected: the first line at once
  for _ in range(9):
    clock[0] += 2.0
    slow.update(100)
  assert lines[0] == 'stats: 100/1,000 images | 50 images/s | elapsed 0m02s | ETA 0m18s'
  assert lines[1].startswith('stats: 600/1,000 images') and lines[1].endswith('ETA 0m08s')
  assert lines[-1].startswith('stats: 1,000/1,000') and lines[-1].endswith('ETA 0m00s')
  assert len(lines) == 3
  assert progress.format_eta(3725) == '1h02m' and progress.format_eta(float('inf')) == '?'


@pytest.mark.slow
def test_fig1_shows_its_runs_and_their_step_lines_with_an_eta(tmp_path):
  """Was: 5 minutes without a line (the results-only console hid the loop's lines).
  Also what fig1 finds: which data, each run's curve, its config and the epoch
  at which its training error first reaches 25%."""
  from alexnet_jax import figures, predict  # pylint: disable=g-import-not-at-top
  out = _tool('figures', 'fig1', '--data=digits', '--epochs=1', f'--output_dir={tmp_path}')
  assert out.returncode == 0, out.stderr
  err = out.stderr
  assert 'fig1: run 1/2, relu, 1 epochs' in err and 'fig1: run 2/2, tanh' in err, err
  assert re.search(r'step (\d+)/\1 \(epoch 1\.00.*\| ETA 0m00s', err), err
  assert re.search(r'fig1: 1/2 runs \| .* \| ETA \d+m\d\ds', err), err
  assert 'Figure 1 data: scikit-learn digits' in out.stdout
  with open(tmp_path / 'fig1.json') as f:
    result = json.load(f)
  assert 'digits' in result['data'] and 'stand-in' in result['data']
  for act in ('relu', 'tanh'):
    run = result['runs'][act]
    assert [e for e, _ in run['curve']] == [1.0]
    assert run['epoch_to_threshold'] == figures.first_epoch_below(run['curve'], 0.25)
    config = predict.load_config(run['workdir'])
    assert config.model.name == 'figure1' and config.model.activation == act
    assert config.optimizer.weight_decay == 0 and config.input.mean == 'image'
  assert os.path.getsize(tmp_path / 'fig1.png') > 5000


# ------------------------------------- item 6: convert --source=torchvision, no torch


def test_convert_without_torch_is_one_line_naming_requirements_dev(tmp_path):
  pth = tmp_path / 'alexnet.pth'
  pth.write_bytes(b'not read')
  out = _tool('convert', '--config=configs/torchvision.py', '--source=torchvision',
              f'--input={pth}', f'--workdir={tmp_path / "w"}',
              site=_site(tmp_path, "import sys\nsys.modules['torch'] = None  # not installed\n"))
  error = _one_error(out, 1)
  assert error.count('\n') == 1, error
  assert 'PyTorch, which is not installed: pip install -r requirements-dev.txt' in error
  assert not (tmp_path / 'w').exists()


# ------------------------------------------- item 7: predict names the crops used


def test_predict_ten_crop_names_the_five_crops_of_a_run_without_reflections(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import convert  # pylint: disable=g-import-not-at-top
  from alexnet_jax import models  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  assert not config.input.flip
  model = models.create_model(config.model)
  params = model.init(jax.random.key(0), np.zeros((1, 67, 67, 3), np.float32), train=False)
  convert.write_workdir(str(tmp_path / 'w'), config, params['params'])
  Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / 'a.png')
  out = _tool('predict', f'--workdir={tmp_path / "w"}', '--ten_crop', tmp_path / 'a.png')
  assert out.returncode == 0, out.stderr
  first = out.stdout.splitlines()[0]
  assert first == f'{tmp_path / "w"} step 0 (latest), 5-crop (no reflections):', first
  assert 'ten patches' not in out.stdout


# --------------------------- item 8: the download configs offline name one file


_OFFLINE = '''import socket
def _unreachable(*args, **kwargs):
  raise OSError(101, 'Network is unreachable (test: offline)')
socket.create_connection = socket.getaddrinfo = _unreachable
'''


@pytest.mark.parametrize('config,url', [
    ('imagenette', 'https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz (1.6 GB)'),
    ('cifar10', 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz (0.17 GB)'),
])
def test_download_config_offline_names_the_one_file_and_its_config(tmp_path, config, url):
  data = tmp_path / 'tfds'
  out = _tool('main', f'--config=configs/{config}.py', f'--workdir={tmp_path / "w"}',
              f'--config.dataset.data_dir={data}', site=_site(tmp_path, _OFFLINE), timeout=120)
  error = _one_error(out, 1)
  assert 'is not reachable' in error and error.count('https://') == 1, error
  assert f'fetch the one file it needs, {url},\n     into {data}/downloads/manual' in error
  assert (f'run: python -m alexnet_jax.prepare --config=configs/{config}.py --tfds_build '
          f'--config.dataset.data_dir={data}\n') in error, error
  assert 'ilsvrc' not in error and 'config.dataset.name' not in error
  assert not (tmp_path / 'w').exists() and not data.exists()


# ------------------------------------- item 9: prepare's workers start quietly


def test_prepare_workers_print_no_tensorflow_start_up_lines(tmp_path):
  out = _tool('prepare', '--config=configs/digits.py', '--splits=eval', '--shard_size=180',
              '--workers=2', f'--output_dir={tmp_path / "p"}')
  assert out.returncode == 0, out.stderr
  assert '2 worker(s)' in out.stdout and 'Wrote 360 images in 2 shards' in out.stdout
  log = out.stdout + out.stderr
  for noise in ('absl::InitializeLog', 'oneDNN', 'I0000 '):
    assert noise not in log, log


# ------------------------------------- item 10: statistics name the source read


def test_stats_of_a_folder_name_the_folder_not_imagenet2012(tmp_path):
  folder = _jpegs(tmp_path / 'pets')
  out = _tool('stats', '--config=configs/ilsvrc.py', f'--config.dataset.folder={folder}',
              f'--output={tmp_path / "stats.npz"}')
  assert out.returncode == 0, out.stderr
  source = f'computed: folder {folder}, split train'
  assert f'8 images, {source};' in out.stderr, out.stderr
  with np.load(tmp_path / 'stats.npz') as saved:
    assert str(saved['source']) == source
  assert 'imagenet2012' not in out.stdout + out.stderr


# ----------------------------- item 11: the README's command for your own images


def test_only_tfds_on_the_fly_uses_the_published_constants(tmp_path):
  """Issue 26: prepared and folder sources use their training set's statistics
  (tests/test_stats.py); tfds read on the fly, the published ones, by name."""
  from alexnet_jax import data_sources  # pylint: disable=g-import-not-at-top
  from alexnet_jax import stats  # pylint: disable=g-import-not-at-top
  config = tiny_config(**{'dataset.source': 'tfds', 'dataset.data_dir': str(tmp_path)})
  used = stats.for_dataset(stats.Settings.of(**config.input),
                           data_sources.Dataset(**config.dataset),
                           images=lambda: pytest.fail('computed from the images'))
  assert used.source == 'published ImageNet constants'


def _readme_block(marker):
  """The README's indented command lines that follow the line holding `marker`."""
  lines = open(os.path.join(ROOT, 'README.md')).read().split(marker, 1)[1].splitlines()[1:]
  start = next(i for i, line in enumerate(lines) if line.startswith('    '))
  block = []
  for line in lines[start:]:
    if not line.startswith('    '):
      break
    block.append(line.strip())
  return ' '.join(block).replace('\\ ', '').split('python -m ')[1:]


@pytest.mark.slow
def test_readme_own_images_smoke_run(tmp_path):
  """The README's tested command, on a tiny folder of JPEGs:
  configs/ilsvrc.py:runlocal (the full AlexNet, 4 steps of batch 8), with
  the folder's statistics computed over its training images and cached."""
  folder = _jpegs(tmp_path / 'ROOT', splits=(('train', 8), ('val', 4)))
  commands = _readme_block('A small run of the recipe on your own folder')
  assert [c.split()[0] for c in commands] == ['alexnet_jax.main']
  for command in commands:
    args = command.replace('$WORKDIR', str(tmp_path / 'w')).replace('ROOT', str(folder)).split()
    out = _tool(args[0].split('.')[1], *args[1:])
    assert out.returncode == 0, out.stderr
  final = json.loads((tmp_path / 'w' / 'final_metrics.json').read_text())
  assert final['step'] == 4 and 0 <= final['eval_multicrop_top1_error'] <= 1
  assert (f'Input statistics: computed over 16 training images of folder {folder}, '
          f'split train; saved to {folder}/') in out.stderr, out.stderr[-3000:]
