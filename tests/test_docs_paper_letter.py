"""The README's table of defaults that depart from the paper (issue 26, item 2):
each switch it names is a real config key that passes the config checks, and
the dropout switch restores section 4.2's letter exactly.
"""

import ast
import os
import re

import jax
import numpy as np

from alexnet_jax import config_checks
from alexnet_jax import models
from configs import ilsvrc
from tests.conftest import set_keys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADING = '### Where the defaults depart from the paper'


def _table_rows():
  text = open(os.path.join(ROOT, 'README.md')).read().split(HEADING, 1)[1]
  rows = []
  for line in text.splitlines()[1:]:
    if rows and not line.startswith('|'):
      break
    if line.startswith('|') and not line.startswith('|---'):
      rows.append(line)
  return rows[1:]  # less the header


def _value(text):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def test_every_switch_of_the_readme_table_is_a_valid_config_override():
  rows = _table_rows()
  assert len(rows) >= 8
  for word in ('constant 1', 'weight', 'kernel maps', '224', 'validation error',
               'training set', 'multiply their outputs by 0.5'):
    assert any(word in row for row in rows), word
  switches = [m for row in rows for m in re.findall(r'`--config\.([\w.]+)=([^`\s]+)`', row)]
  assert len(switches) >= 8, switches
  for key, text in switches:
    if re.fullmatch(r'[A-Z]+|\$\w+', text):  # a placeholder: a path, a number of yours
      continue
    config = ilsvrc.get_config()
    value = _value(text)
    before = config_checks._get(config, key, 'missing')  # pylint: disable=protected-access
    assert before != 'missing', key
    set_keys(config, {key: value})
    if key == 'eval.select_on':
      assert config.eval.ten_crop  # the recipe evaluates ten patches already
    assert not config_checks.validate(config), (key, value)
    assert before != value, f'{key}={value} is already the default'


def test_dropout_scaling_paper_is_inverted_dropout_with_fc7_fc8_halved():
  """Section 4.2: units kept unscaled in training, outputs x 0.5 at test."""
  paper = models.PRESETS['alexnet_tiny'](input_size=67, dropout_scaling='paper')
  inverted = models.PRESETS['alexnet_tiny'](input_size=67)
  images = np.random.default_rng(0).uniform(0, 60, (2, 67, 67, 3)).astype(np.float32)
  # Weights drawn by NumPy (compiling JAX's initializers costs seconds a layer).
  rng = np.random.default_rng(1)
  shapes = jax.eval_shape(inverted.init, jax.random.key(0), images)['params']
  params = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32), shapes)
  halved = {**params, **{k: {**params[k], 'kernel': params[k]['kernel'] * 0.5}
                         for k in ('fc7', 'fc8')}}
  for train in (False, True):
    kw = {'train': True, 'rngs': {'dropout': jax.random.key(1)}} if train else {}
    got = np.asarray(paper.apply({'params': params}, images, **kw))
    want = np.asarray(inverted.apply({'params': halved}, images, **kw))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f'train={train}')
  # Without the halving the two differ (the check above can fail).
  assert np.abs(got - np.asarray(inverted.apply({'params': params}, images, **kw))).max() > 1e-4
