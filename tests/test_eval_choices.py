"""Choices of the evaluation named in the README's table (issue 26, item 4):
which validation metric drives the learning-rate drop and best/
(config.eval.select_on), and what a validation image that does not decode
does (named in the log, left out of the denominator, counted in the metrics).
"""

import io
import json
import logging
import os

import numpy as np
from PIL import Image
import pytest

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import config_checks
from alexnet_jax import optimizer as optimizer_lib
from alexnet_jax import train
from tests.conftest import tiny_config

CLASSES = 10  # the tiny config's model, so its compiled steps are shared


def _folder(root):
  """root/{train,val}/cN/*.jpg: 4 train and 1 val JPEG per class, plus one
  truncated val JPEG (a real file cut in half: its header reads, its pixels don't)."""
  rng = np.random.default_rng(0)
  for split, n in (('train', 4), ('val', 1)):
    for c in range(CLASSES):
      os.makedirs(root / split / f'c{c}', exist_ok=True)
      for i in range(n):
        pixels = np.clip(rng.normal(25 * c, 30, (60, 80, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / split / f'c{c}' / f'{i}.jpg', quality=90)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(buf, 'JPEG')
  bad = root / 'val' / 'c0' / 'truncated.jpg'
  bad.write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
  return bad


def test_select_on_drives_the_drop_and_best_and_undecoded_images_are_counted(
    tmp_path, monkeypatch, caplog):
  bad = _folder(tmp_path / 'data')
  config = tiny_config(**{
      'dataset.source': 'folder', 'dataset.folder': str(tmp_path / 'data'),
      'dataset.name': 'folder', 'num_train_steps': 3, 'eval.every_epochs': 1.0,
      'schedule.name': 'plateau', 'schedule.patience': 1,
      'eval.select_on': 'eval_multicrop_top1_error'})
  assert not config_checks.validate(config)
  # The multi-crop evaluation's top-1 error, replaced by values the centre
  # crop's cannot have: whatever the plateau and best/ receive came from it.
  multicrop = iter([0.7, 0.2, 0.9])
  evaluate = train.evaluate

  def fake_evaluate(run, params, ten_crop, supervise=iter):
    m = evaluate(run, params, ten_crop, supervise)
    return m | {'top1_error': next(multicrop)} if ten_crop else m
  monkeypatch.setattr(train, 'evaluate', fake_evaluate)
  plateau, best = [], []
  update = optimizer_lib.plateau_update
  monkeypatch.setattr(optimizer_lib, 'plateau_update',
                      lambda p, error, s: plateau.append(round(error, 6)) or update(p, error, s))
  save_best = ckpt_lib.Checkpointer.save_best
  monkeypatch.setattr(ckpt_lib.Checkpointer, 'save_best', lambda self, step, state, d, m: (
      best.append(round(m['top1_error'], 6)) or save_best(self, step, state, d, m)))
  caplog.set_level(logging.INFO)

  train.train_and_evaluate(config, str(tmp_path / 'w'))
  # One step per epoch: evaluations at steps 1, 2, 3; the plateau at 1 and 2.
  assert plateau == [0.7, 0.2] and best == [0.7, 0.2, 0.9]
  final = json.loads((tmp_path / 'w' / 'final_metrics.json').read_text())
  assert final['eval_multicrop_top1_error'] == pytest.approx(0.9)
  # The truncated JPEG: named, left out of the 10-image denominator, counted.
  assert final['eval_undecoded'] == 1
  assert final['eval_top1_error'] * 10 == pytest.approx(round(final['eval_top1_error'] * 10))
  assert bad.name in caplog.text and '(10 images, 1 not decoded, left out' in caplog.text


def test_select_on_multicrop_needs_the_multicrop_evaluation():
  config = tiny_config(**{'eval.select_on': 'eval_multicrop_top1_error', 'eval.ten_crop': False})
  assert any('eval.select_on' in p and 'ten_crop=True' in p
             for p in config_checks.validate(config))
  assert any('eval.select_on' in p for p in config_checks.validate(
      tiny_config(**{'eval.select_on': 'top5'})))
