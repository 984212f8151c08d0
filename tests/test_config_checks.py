"""The whole config checked before anything runs (alexnet_jax/config_checks.py, main.py).

One case per validation rule in process; a few runs of main itself check what
a user sees: status 2, one message naming every bad key, no traceback, and
nothing written into the workdir.
"""

import collections
import json
import os
import subprocess
import sys

import pytest

from alexnet_jax import cli
from alexnet_jax import config_checks
from alexnet_jax import input_pipeline
from alexnet_jax import train
from configs import cifar10
from configs import digits
from configs import ilsvrc
from configs import imagenette
from configs import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Info = collections.namedtuple('Info', 'num_classes num_train', defaults=(10**6,))


def _config(**overrides):
  config = digits.get_config()
  config.update_from_flattened_dict(overrides)
  return config


@pytest.mark.parametrize('module', [digits, ilsvrc, imagenette, cifar10, torchvision])
def test_shipped_configs_are_valid(module):
  assert config_checks.validate(module.get_config(), num_devices=8) == []
  assert config_checks.validate(module.get_config(), num_devices=1) == []


# (overrides, the key the one problem must name, a word of the fix)
RULES = [
    ({'schedule.name': 'cosin'}, 'schedule.name', "schedule.name=cosine?"),
    ({'model.activation': 'gelu'}, 'model.activation', "'relu' or 'tanh'"),
    ({'model.kernel_init': 'xavier'}, 'model.kernel_init', "'paper' or 'he'"),
    ({'model.dtype': 'float64'}, 'model.dtype', "'float32'"),
    ({'model.name': 'nope'}, 'model.name', "'alexnet_tiny'"),
    ({'model.num_classes': 0}, 'model.num_classes', '>= 1'),
    ({'model.dropout_rate': 1.0}, 'model.dropout_rate', '[0, 1)'),
    ({'optimizer.rule': 'adam'}, 'optimizer.rule', "'trace_then_scale'"),
    ({'optimizer.weight_decay_on': 'biases'}, 'optimizer.weight_decay_on', "'kernels'"),
    ({'optimizer.learning_rate': -1.0}, 'optimizer.learning_rate', '(0, inf)'),
    ({'optimizer.momentum': 1.0}, 'optimizer.momentum', '[0, 1)'),
    ({'optimizer.weight_decay': -1e-4}, 'optimizer.weight_decay', '[0, inf)'),
    ({'schedule.factor': 0.0}, 'schedule.factor', '(0, 1]'),
    ({'schedule.patience': 0}, 'schedule.patience', '>= 1'),
    ({'input.mean': 'pixel'}, 'input.mean', "'channel'"),
    ({'input.pca_lighting': -0.1}, 'input.pca_lighting', '[0, inf)'),
    ({'input.pixel_scale': 0.0}, 'input.pixel_scale', '(0, inf)'),
    ({'input.resize_size': 60}, 'input.resize_size', 'model.input_size=67'),
    ({'dataset.source': 'tfrecords'}, 'dataset.source', "'folder'"),
    ({'batch_size': 0}, 'batch_size', '>= 1'),
    ({'eval.batch_size': 0}, 'eval.batch_size', '>= 1'),
    ({'log_every_steps': 0}, 'log_every_steps', '>= 1'),
    ({'checkpoint_every_steps': 0}, 'checkpoint_every_steps', '>= 1'),
    ({'keep_checkpoints': 0}, 'keep_checkpoints', '>= 1'),
    ({'num_epochs': 0.0}, 'num_epochs', 'num_train_steps > 0'),
    ({'eval.every_epochs': 0.0}, 'eval.every_epochs', '(0, inf)'),
    ({'mesh': (3, 1)}, 'mesh', 'needs 3 devices, but 1'),
    ({'mesh': (-1, -1)}, 'mesh', 'at most one -1'),
    ({'mesh': (1,)}, 'mesh', 'two integers'),
    ({'model.lrm': True}, 'model', "keys ['lrm'] that model 'alexnet' does not take"),
    ({'init_from': '/nonexistent/run'}, 'init_from', 'does not exist'),
    ({'init_reinit': ('fc8', 8)}, 'init_reinit', 'tuple of layer names'),
]


@pytest.mark.parametrize('overrides,key,fix', RULES, ids=[r[1] + '-' + str(i)
                                                        for i, r in enumerate(RULES)])
def test_each_rule_names_the_key_and_the_fix(overrides, key, fix):
  problems = config_checks.validate(_config(**overrides), num_devices=1)
  assert len(problems) == 1, problems
  assert problems[0].startswith(f'config.{key}'), problems
  assert fix in problems[0], problems


def test_num_epochs_zero_is_fine_with_num_train_steps():
  assert config_checks.validate(_config(num_epochs=0.0, num_train_steps=5)) == []


def test_batch_sizes_must_divide_over_the_data_axis():
  config = _config(batch_size=7, **{'eval.batch_size': 9})
  problems = config_checks.validate(config, num_devices=2)
  assert [p.split('=')[0] for p in problems] == ['config.batch_size', 'config.eval.batch_size']
  assert 'multiple of 2, e.g. 6' in problems[0] and 'e.g. 8' in problems[1]
  # (-1, 2) on 4 devices: a 2-way data axis; without devices only the form is checked.
  assert len(config_checks.validate(_config(batch_size=7, mesh=(-1, 2)), num_devices=4)) == 1
  assert config_checks.validate(config) == []


def test_classes_against_the_real_digits_dataset():
  config = _config(**{'model.num_classes': 5})
  problems = config_checks.validate(config, dataset_info=input_pipeline.resolve(config).info)
  assert problems == ['config.model.num_classes=5: the dataset has 10 classes; set '
                      '--config.model.num_classes=10.']


def test_a_batch_larger_than_the_training_split_is_refused():
  config = _config(**{'batch_size': 2048})   # digits: 1,437 training images
  problems = config_checks.validate(config, dataset_info=input_pipeline.resolve(config).info)
  assert problems == ['config.batch_size=2048: the training split has only 1437 images, '
                      'less than one global batch; set --config.batch_size=1437 or less, '
                      'or add training images.']


def test_every_problem_is_reported_at_once():
  bad = {'schedule.name': 'cosin', 'model.activation': 'gelu', 'mesh': (3, 1),
         'batch_size': 0, 'log_every_steps': 0, 'checkpoint_every_steps': 0,
         'eval.batch_size': 0, 'model.dtype': 'float64', 'model.name': 'nope',
         'num_epochs': 0.0, 'optimizer.learning_rate': -1.0}
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.check(_config(**bad), num_devices=1, dataset_info=Info(10))
  message = str(e.value)
  assert message.startswith('cannot start (11 problems;')
  for key in bad:
    assert f'config.{key}=' in message, key


def test_train_and_evaluate_refuses_before_touching_the_workdir(tmp_path):
  with pytest.raises(config_checks.ConfigError, match='log_every_steps'):
    train.train_and_evaluate(_config(log_every_steps=0), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


# ------------------------------------------------------------ unknown keys


def test_unknown_keys_suggest_the_closest():
  config = ilsvrc.get_config()
  assert cli.override_keys(
      ['main', '--config=x.py', '--config.model.lrm=False', '--noconfig.model.lrn',
       '--workdir=/w']) == ['model.lrm', 'model.lrn']
  got = cli.unknown_keys(
      ['model.lrm', 'modl.lrn', 'batchsize', 'optimizer.lr', 'model.lrn', 'model.lrn.x'],
      config)
  assert got[:3] == ["Unknown config key 'model.lrm'. Did you mean: model.lrn?",
                     "Unknown config key 'modl.lrn'. Did you mean: model.lrn?",
                     "Unknown config key 'batchsize'. Did you mean: batch_size?"]
  assert got[3].startswith("Unknown config key 'optimizer.lr'. Keys under optimizer: "
                           'optimizer.learning_rate, optimizer.momentum')
  assert got[4] == "Unknown config key 'model.lrn.x'. config.model.lrn is a value, not a group of keys."


def test_config_flag_problems_read_the_given_config_file():
  default = os.path.join(ROOT, 'configs', 'digits.py')
  # cifar10's model has no LRN keys; digits' (the default) has.
  argv = ['main', '--config=configs/cifar10.py', '--config.model.lrn=False']
  assert cli.config_flag_problems(argv, default)[0].startswith(
      "Unknown config key 'model.lrn'.")
  assert cli.config_flag_problems(argv[:1] + argv[2:], default) == []
  assert cli.config_flag_problems(['main', '--config', 'configs/ilsvrc.py:runlocal',
                                            '--config.seed=1'], default) == []
  [p] = cli.config_flag_problems(['main', '--config=configs/ilsvr.py'], default)
  assert p.startswith('--config=configs/ilsvr.py: no such file. The configs are ')
  assert 'configs/ilsvrc.py' in p


# ----------------------------------------------------------------- workdir


def test_workdir_problems(tmp_path, monkeypatch):
  (tmp_path / 'file').write_text('x')
  assert config_checks.workdir_problems(str(tmp_path / 'new' / 'run')) == []
  assert config_checks.workdir_problems('gs://bucket/run') == []
  for empty in ('', None, '  '):
    [p] = config_checks.workdir_problems(empty)
    assert p.startswith('--workdir is empty (an unset $WORKDIR?)')
  [p] = config_checks.workdir_problems(str(tmp_path / 'file'))
  assert p.endswith('file is a file, not a directory; pass a directory path.')
  [p] = config_checks.workdir_problems(str(tmp_path / 'file' / 'run'))
  assert f'is under {tmp_path / "file"}, which is a file' in p
  # Permission bits do not bind root, so ask os.access as a non-root user would.
  monkeypatch.setattr(os, 'access', lambda path, mode: path != str(tmp_path))
  [p] = config_checks.workdir_problems(str(tmp_path))
  assert p.endswith('is not writable by this user; pass a directory you can write to.')
  [p] = config_checks.workdir_problems(str(tmp_path / 'run'))
  assert f'would be created in {tmp_path}, which is not writable' in p


# ------------------------------------------------------ main, end to end


def _main(*args, env=None):
  return subprocess.run([sys.executable, '-m', 'alexnet_jax.main', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'PYTHONPATH': ROOT, **(env or {})})


def test_main_mistyped_key_one_line_with_suggestion(tmp_path):
  out = _main(f'--workdir={tmp_path / "w"}', '--config.model.lrm=False')
  assert out.returncode == 2
  assert out.stderr == "ERROR: Unknown config key 'model.lrm'. Did you mean: model.lrn?\n"
  assert not (tmp_path / 'w').exists()


def test_main_bad_values_exit_2_naming_each_key_and_write_nothing(tmp_path):
  workdir = tmp_path / 'w'
  workdir.mkdir()   # An existing workdir stays as it was.
  bad = ['schedule.name=cosin', 'model.activation=gelu', 'mesh=(3,1)', 'batch_size=0',
         'log_every_steps=0', 'checkpoint_every_steps=0', 'eval.batch_size=0',
         'model.dtype=float64', 'model.name=nope', 'num_epochs=0',
         'optimizer.learning_rate=-1']
  out = _main(f'--workdir={workdir}', *(f'--config.{b}' for b in bad),
              env={'XLA_FLAGS': '--xla_force_host_platform_device_count=1'})
  assert out.returncode == 2, out.stderr
  assert 'Traceback' not in out.stderr + out.stdout
  assert out.stderr.startswith('ERROR: cannot start (11 problems; nothing was run or written)')
  for b in bad:
    assert f'config.{b.split("=")[0]}=' in out.stderr, b
  assert list(workdir.iterdir()) == []


def test_main_batch_against_devices_classes_against_dataset_and_empty_workdir(tmp_path):
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  out = _main('--workdir=', '--config.batch_size=7', env=env)
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  lines = out.stderr.splitlines()
  assert lines[1].startswith('  - --workdir is empty')
  assert lines[2].startswith('  - config.batch_size=7: must divide over the 2-way data axis')
  assert not os.path.exists(os.path.join(ROOT, 'checkpoints'))
  # Classes are checked against the dataset once the rest is valid.
  out = _main(f'--workdir={tmp_path / "w"}', '--config.model.num_classes=5', env=env)
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert out.stderr.splitlines()[1] == ('  - config.model.num_classes=5: the dataset has 10 '
                                        'classes; set --config.model.num_classes=10.')
  assert not (tmp_path / 'w').exists()


def test_main_console_one_line_per_event_and_multicrop_names(tmp_path):
  """Items 10, 11: no clu logging-writer echo, no TF/JAX INFO lines, and the
  multi-crop evaluation named for what it is (digits: 5 crops, no reflections)."""
  tiny = ['--config.model.conv_features=(8, 8, 8, 8, 8)', '--config.model.fc_features=16',
          '--config.batch_size=32', '--config.num_train_steps=1', '--config.log_every_steps=1',
          '--config.eval.batch_size=360', '--config.async_checkpoints=False']
  out = _main(f'--workdir={tmp_path}', *tiny,
              env={'XLA_FLAGS': '--xla_force_host_platform_device_count=1'})
  assert out.returncode == 0, out.stderr
  log = out.stdout + out.stderr
  assert 'I0000' not in log and 'xla_bridge' not in log and 'oneDNN' not in log, log
  assert 'logging_writer' not in log, log
  assert log.count(' step 1/1 ') == 1, log
  assert log.count('5-crop (no reflections)') == 1, log
  final = json.loads((tmp_path / 'final_metrics.json').read_text())
  assert final['eval_multicrop_crops'] == 5
  assert 0 <= final['eval_multicrop_top1_error'] <= 1
  assert not any(k.startswith('eval10') for k in final)


@pytest.mark.parametrize('args, want', [
    (['--config=configs/ilsvrc.py:runlocl'], "configs/ilsvrc.py takes no argument 'runlocl'"),
    (['--config=configs/cifar10.py:tanhh'], "configs/cifar10.py takes relu, tanh and digits"),
    (['--config.batch_size=abc'], '--config.batch_size'),
])
def test_main_refuses_a_config_argument_or_value_in_one_line(tmp_path, args, want):
  """Issue 20: an unknown config argument (a typo would launch the full recipe)
  or an unparsable value: one ERROR line, status 2, nothing written."""
  out = _main(f'--workdir={tmp_path / "w"}', *args)
  assert out.returncode == 2, out.stderr
  assert out.stderr.startswith('ERROR: ') and want in out.stderr, out.stderr
  assert out.stderr.count('\n') == 1 and 'Traceback' not in out.stderr, out.stderr
  assert not (tmp_path / 'w').exists()


def test_main_refuses_a_workdir_that_cannot_be_created(tmp_path):
  out = _main('--workdir=/proc/alexnet_w', '--config.num_train_steps=1')
  assert out.returncode == 2, out.stderr
  assert 'cannot be created or written in /proc' in out.stderr and 'Traceback' not in out.stderr
  assert not os.path.exists('/proc/alexnet_w')


# --------------------------------------------------------------------------
# One place for each default (issue 25): the model's fields, the run's config
# --------------------------------------------------------------------------


def test_ilsvrc_declares_every_other_model_field_as_a_placeholder():
  """configs/ilsvrc.py's MODEL_FIELDS are AlexNet's fields (less the mesh, which
  alexnet_jax.parallel sets), unset: the model's defaults."""
  from alexnet_jax import models  # pylint: disable=g-import-not-at-top
  fields = set(models.AlexNet.__dataclass_fields__) - {'parent', 'name', 'mesh', 'tower_axis'}
  model = ilsvrc.get_config().model
  assert {k for k, _ in ilsvrc.MODEL_FIELDS} == fields - {'num_classes', 'input_size'}
  assert set(model) == fields | {'name'}
  assert all(model[k] is None for k, _ in ilsvrc.MODEL_FIELDS)


def test_model_placeholders_parse_from_the_command_line():
  """Tuple, float, bool, int and str placeholders take --config.model.KEY=VALUE
  (ml_collections' config flags are locked: the key must exist)."""
  from alexnet_jax import models  # pylint: disable=g-import-not-at-top
  from alexnet_jax import sweep  # pylint: disable=g-import-not-at-top
  config, _ = sweep.parse_main_flags([
      '--config=configs/ilsvrc.py', '--workdir=w', '--config.model.conv_features=(8,16,24,24,16)',
      '--config.model.lrn=False', '--config.model.bias_init=1', '--config.model.init_std=0.005',
      '--config.model.towers=1', '--config.model.activation=tanh', '--config.model.dtype=bfloat16'])
  model = config.model
  assert (model.conv_features, model.lrn, model.bias_init, model.init_std, model.towers,
          model.activation) == ((8, 16, 24, 24, 16), False, 1.0, (0.005,), 1, 'tanh')
  assert isinstance(model.bias_init, float)
  net = models.create_model(model)
  assert (net.conv_features, net.lrn, net.bias_init, net.towers, net.fc_features) == (
      (8, 16, 24, 24, 16), False, 1.0, 1, 4096)
  with pytest.raises(Exception, match='towers'):
    sweep.parse_main_flags(['--config=configs/ilsvrc.py', '--workdir=w',
                            '--config.model.towers=1.5'])


@pytest.mark.parametrize('module', [digits, ilsvrc, imagenette, cifar10, torchvision])
def test_tools_read_the_runs_own_config(tmp_path, module):
  """predict.load_config: W/config.json as written, the same model (no overlay)."""
  from alexnet_jax import models  # pylint: disable=g-import-not-at-top
  from alexnet_jax import predict  # pylint: disable=g-import-not-at-top
  config = module.get_config()
  (tmp_path / 'config.json').write_text(config.to_json_best_effort(indent=2))
  loaded = predict.load_config(str(tmp_path))
  assert loaded.to_dict() == config.to_dict()
  assert repr(models.create_model(loaded.model)) == repr(models.create_model(config.model))
  recipe = lambda c: input_pipeline.make_recipe(c.model.input_size, **c.input)
  assert recipe(loaded) == recipe(config)


def test_a_run_of_an_earlier_version_names_its_missing_keys(tmp_path):
  from alexnet_jax import predict  # pylint: disable=g-import-not-at-top
  saved = json.loads(digits.get_config().to_json_best_effort())
  del saved['input']['fast_train_resample'], saved['model']['input_size']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  with pytest.raises(ValueError) as e:
    predict.load_config(str(tmp_path))
  message = str(e.value)
  assert 'has no model.input_size, input.fast_train_resample: an earlier version' in message
  assert 'Add each key' in message and str(tmp_path / 'config.json') in message
