"""The dead-network alarm (issue 17): a layer with no firing unit through a
whole logging window stops the run in one line and puts its checkpoints aside."""

import os
import re

import pytest

from alexnet_jax import cli
from alexnet_jax import train
from tests.conftest import tiny_config


def _dead(**overrides):
  """The tiny run with every non-zero bias at -10: conv2's ReLUs never fire, and
  nothing above them does either."""
  return tiny_config(**{'model.bias_init': -10.0, 'model.kernel_init': 'paper',
                        'log_every_steps': 8, 'checkpoint_every_steps': 4,
                        'eval.ten_crop': False, **overrides})


def test_dead_layers_of_a_window():
  window = [{'loss': 2.3, 'firing_conv1': 0.5, 'firing_fc7': 0.0},
            {'loss': 2.3, 'firing_conv1': 0.4, 'firing_fc7': 0.0}]
  assert train.dead_layers(window) == ['fc7']
  window[1]['firing_fc7'] = 0.005  # a unit or two on one step: alive by the letter ...
  assert train.dead_layers(window) == []
  assert train.dead_layers(window, min_firing=0.01) == ['fc7']  # ... dead in effect
  window[0]['firing_fc7'] = 0.02  # above the threshold on one step of the window
  assert train.dead_layers(window, min_firing=0.01) == []


def test_alarm_stops_a_dead_network_within_one_window(tmp_path):
  with pytest.raises(train.DeadNetworkError) as e:
    train.train_and_evaluate(_dead(), str(tmp_path))
  message = str(e.value)
  assert 'fc7' in message and 'conv2' in message and 'step 8' in message, message
  assert '--config.model.bias_init=0.1' in message and 'warmup' in message, message
  assert cli._status_of(e.value) == cli.ERROR_STATUS  # pylint: disable=protected-access
  # Step 4's checkpoint (a dead state) is put aside: a rerun with a fix starts fresh.
  dead_dir = tmp_path / 'checkpoints-dead'
  assert dead_dir.is_dir() and os.listdir(dead_dir), os.listdir(tmp_path)
  assert not [s for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit()]


def test_alarm_off_lets_the_run_go_on(tmp_path):
  state = train.train_and_evaluate(
      _dead(**{'health.stop_on_dead_layer': False, 'num_train_steps': 8}), str(tmp_path))
  assert int(state.step) == 8


def test_non_finite_loss_message_names_the_step_and_quotes_the_losses_before_it(tmp_path):
  """(Also tests/test_train.py's stop at a non-finite loss, naming its step.)"""
  config = tiny_config(**{'optimizer.learning_rate': 1e12, 'num_train_steps': 8,
                          'log_every_steps': 1, 'eval.ten_crop': False})
  with pytest.raises(train.NonFiniteLossError, match=r'at step \d') as e:
    train.train_and_evaluate(config, str(tmp_path))
  assert re.search(r'losses before it: (step \d+: |none)', str(e.value)), e.value
