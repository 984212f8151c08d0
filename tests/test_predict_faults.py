"""predict with faults in its input (issue 18 item 9): an unreadable image
among good ones, a stray file named like a checkpoint step."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import predict
from alexnet_jax import train
from tests.test_faults import ROOT, STEPS


@pytest.fixture
def workdir(reference_run):
  """A finished run of cfg(num_train_steps=STEPS): tests/conftest.py's
  reference_run (read only; copy it to change it)."""
  return reference_run[0]


@pytest.fixture
def images(tmp_path):
  """Two real JPEGs and, between them by name, a file that is no image."""
  folder = tmp_path / 'images'
  folder.mkdir()
  rng = np.random.default_rng(0)
  for name in ('a.jpg', 'c.jpg'):
    PIL.Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / name)
  (folder / 'b.jpg').write_bytes(b'not a jpeg at all')
  return folder


def test_an_unreadable_image_is_reported_and_the_rest_predicted(workdir, images):
  result = predict.predict(str(workdir), [str(images)])
  good = [str(images / 'a.jpg'), str(images / 'c.jpg')]
  assert result['files'] == good
  assert [e['file'] for e in result['errors']] == [str(images / 'b.jpg')]
  assert 'not a readable image' in result['errors'][0]['error']
  alone = predict.predict(str(workdir), good)   # the same predictions as without it
  assert result['predictions'] == alone['predictions'] and not alone['errors']
  lines = result['text'].splitlines()
  at = lines.index(str(images / 'b.jpg'))
  assert lines[at + 1].startswith('  ERROR: ') and lines[at + 2] == str(images / 'c.jpg')
  with pytest.raises(ValueError, match='b.jpg'):   # eval_images (figures' API) still refuses
    predict.eval_images(predict.load_config(str(workdir)), [str(images / 'b.jpg')], False)


def test_the_command_writes_the_error_entry_and_exits_1(workdir, images, tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.predict', f'--workdir={workdir}',
       f'--output_dir={tmp_path / "out"}', str(images)],
      capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
      timeout=300)
  assert proc.returncode == 1, proc.stderr
  assert proc.stdout.count('  5. ') == 2 and '  ERROR: ' in proc.stdout, proc.stdout
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      f'ERROR: 1 of 3 image files could not be read: {images / "b.jpg"}.')
  saved = json.loads((tmp_path / 'out' / 'predictions.json').read_text())
  assert len(saved['predictions']) == 2 and saved['errors'][0]['file'] == str(images / 'b.jpg')


def test_a_stray_file_named_like_a_step_is_skipped(workdir, tmp_path):
  """`touch checkpoints/999`: training skips it (orbax lists directories only);
  predict, ensemble, figures (predict.load_run) and init_from do too."""
  workdir = shutil.copytree(workdir, tmp_path / 'w')   # the shared run stays as it was
  for sub in ('checkpoints', 'best'):
    (workdir / sub / '999').touch()
  params, _, step = ckpt_lib.load_params(str(workdir))
  assert step == STEPS
  assert ckpt_lib.load_params(str(workdir), 'best')[2] in (11, STEPS)
  assert predict.load_run(str(workdir)).step == STEPS
  fresh = predict.load_run(str(workdir)).params
  merged = train.init_params_from(str(workdir), (), fresh)
  np.testing.assert_array_equal(merged['fc8']['kernel'], params['fc8']['kernel'])
