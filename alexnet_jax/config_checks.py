"""The whole config checked at once, before a workdir is touched.

    problems = validate(config, num_devices=8, dataset_info=info)  # list[str]
    check(config, ...)                       # raises ConfigError listing them all

Each problem names the key, the bad value and the fix. `unknown_keys` answers
a mistyped `--config.KEY` with the closest existing keys, as absl does for
mistyped flags. The allowed names come from the code that uses them
(models.PRESETS, optimizer.SCHEDULES, data_sources.SOURCES, stats.MEAN_MODES, ...).
"""

import difflib
import math
import numbers
import os
import tempfile
from typing import Any, Optional, Sequence

from alexnet_jax import cli


class ConfigError(ValueError):
  """The config (or the workdir) cannot run; the message lists every problem."""


cli.user_error(ConfigError, cli.USAGE_STATUS)


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def mesh_shape(mesh: Any, num_devices: Optional[int]) -> Optional[tuple[int, int]]:
  """The (data, model) sizes `config.mesh` gives on `num_devices` devices.

  One -1 entry means "all remaining devices". With num_devices=None only the
  form is checked (returns None). Raises ValueError naming the fix.
  """
  shape = list(mesh) if isinstance(mesh, (tuple, list)) else [mesh]
  if len(shape) != 2 or not all(_is_int(s) for s in shape):
    raise ValueError(f'config.mesh must be two integers (data, model), got {mesh!r}; '
                     'e.g. --config.mesh="(-1, 1)".')
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f'config.mesh={tuple(mesh)}: use positive sizes and at most '
                     'one -1 ("all remaining devices"), e.g. --config.mesh="(-1, 1)".')
  if num_devices is None:
    return None
  if -1 in shape:
    rest = math.prod(s for s in shape if s != -1)
    if num_devices % rest:
      raise ValueError(f'config.mesh={tuple(mesh)}: {num_devices} devices do not '
                       f'divide by {rest}; use --config.mesh="(-1, 1)".')
    shape[shape.index(-1)] = num_devices // rest
  if math.prod(shape) != num_devices:
    raise ValueError(f'config.mesh={tuple(mesh)} needs {math.prod(shape)} devices, '
                     f'but {num_devices} are available; set --config.mesh="(-1, {shape[1]})".')
  return shape[0], shape[1]


def _get(config, dotted: str, default=None):
  node = config
  for k in dotted.split('.'):
    if not hasattr(node, 'get') or k not in node:
      return default
    node = node[k]
  return node


class _Checks:
  """Collects problems of one config, one line each (`validate`)."""

  def __init__(self, config):
    self.config, self.problems = config, []

  def get(self, key):
    return _get(self.config, key)

  def bad(self, key, value, fix):
    self.problems.append(f'config.{key}={value!r}: {fix}')

  def one_of(self, key, allowed, suggest=True) -> bool:
    value = self.get(key)
    if value not in allowed:
      close = suggest and difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.6)
      self.bad(key, value, f'use one of {", ".join(map(repr, allowed))}' +
               (f' (--config.{key}={close[0]}?).' if close else '.'))
      return False
    return True

  def positive_int(self, key, minimum=1) -> bool:
    value = self.get(key)
    if value is not None and not (_is_int(value) and value >= minimum):
      self.bad(key, value, f'must be an integer >= {minimum}.')
      return False
    return value is not None

  def in_range(self, key, low, high, low_open=False, high_open=True) -> None:
    value = self.get(key)
    if value is None:
      return
    ok = _is_number(value) and (value > low if low_open else value >= low) and (
        high is None or (value < high if high_open else value <= high))
    if not ok:
      interval = (('(' if low_open else '[') + f'{low}, ' +
                  ('inf)' if high is None else f'{high}' + (')' if high_open else ']')))
      self.bad(key, value, f'must be a number in {interval}.')


def _check_input(c: _Checks) -> None:
  from alexnet_jax import data_sources  # pylint: disable=g-import-not-at-top
  from alexnet_jax import stats as stats_lib  # pylint: disable=g-import-not-at-top
  if c.one_of('dataset.source', data_sources.SOURCES):
    try:  # a folder or prepared_dir the named source would ignore
      data_sources.source_name(c.config.dataset)
    except ValueError as e:
      c.problems.append(str(e))
  c.one_of('input.mean', stats_lib.MEAN_MODES)
  c.positive_int('dataset.shuffle_buffer')
  c.positive_int('dataset.prefetch', 0)
  c.positive_int('dataset.threads', 0)
  c.in_range('input.pca_lighting', 0, None)
  scale = c.get('input.pixel_scale')
  if isinstance(scale, (tuple, list)):  # one per RGB channel (configs/torchvision.py)
    if len(scale) != 3 or not all(_is_number(v) and v > 0 for v in scale):
      c.bad('input.pixel_scale', scale, 'must be a number > 0 or 3 of them (R, G, B).')
  else:
    c.in_range('input.pixel_scale', 0, None, low_open=True)
  if c.positive_int('input.resize_size') and c.positive_int('model.input_size'):
    resize, crop = c.get('input.resize_size'), c.get('model.input_size')
    if resize < crop:
      c.bad('input.resize_size', resize, f'must be >= config.model.input_size={crop} (the '
            'crops are cut from the resized image).')


def _check_model(c: _Checks) -> None:
  from alexnet_jax import models  # pylint: disable=g-import-not-at-top
  model_ok = c.one_of('model.name', sorted(models.PRESETS))
  for key in ('model.dtype', 'model.param_dtype'):
    if c.get(key) is not None:
      model_ok &= c.one_of(key, sorted(models.DTYPES), suggest=False)
  for key, lookup in (('model.activation', models.activation_fn),
                      ('model.kernel_init', models.kernel_initializer)):
    if c.get(key) is not None:
      try:
        lookup(c.get(key))
      except ValueError as e:
        model_ok = False
        c.bad(key, c.get(key), f'{e}'.split('; ', 1)[-1].rstrip('.') + '.')
  model_ok &= c.positive_int('model.num_classes')
  c.in_range('model.dropout_rate', 0, 1)
  if model_ok:
    try:
      models.create_model(c.config.model)
    except (ValueError, TypeError) as e:
      c.problems.append(f'config.model: {e}')


def _check_fine_tuning(c: _Checks) -> None:
  init_from = c.get('init_from')
  if init_from is not None:
    if not isinstance(init_from, str) or not init_from.strip():
      c.bad('init_from', init_from, 'must be a path (a workdir, its best/ directory or a '
            'checkpoint step directory), or unset.')
    elif '://' not in init_from and not os.path.exists(init_from):
      c.bad('init_from', init_from, 'does not exist; give a workdir (its latest checkpoint), '
            'its best/ directory or a checkpoint step directory (alexnet_jax.convert writes one).')
  reinit = _get(c.config, 'init_reinit', ())
  if not (isinstance(reinit, (tuple, list)) and all(isinstance(x, str) for x in reinit)):
    c.bad('init_reinit', reinit, 'must be a tuple of layer names, e.g. '
          '--config.init_reinit="(\'fc8\',)".')


def _check_length(c: _Checks) -> None:
  for key in ('batch_size', 'eval.batch_size', 'log_every_steps',
              'checkpoint_every_steps', 'keep_checkpoints'):
    c.positive_int(key)
  steps, epochs = _get(c.config, 'num_train_steps', -1), c.get('num_epochs')
  if not _is_int(steps):
    c.bad('num_train_steps', steps, 'must be an integer (> 0, or <= 0 to use num_epochs).')
  elif steps <= 0 and not (_is_number(epochs) and epochs > 0):
    c.bad('num_epochs', epochs, 'must be > 0 (or set config.num_train_steps > 0).')
  c.in_range('eval.every_epochs', 0, None, low_open=True)
  c.in_range('health.min_firing', 0, 1)
  c.in_range('watchdog_minutes', 0, None)


def _check_optimizer(c: _Checks) -> None:
  from alexnet_jax import optimizer  # pylint: disable=g-import-not-at-top
  c.in_range('optimizer.learning_rate', 0, None, low_open=True)
  c.in_range('optimizer.momentum', 0, 1)
  c.in_range('optimizer.weight_decay', 0, None)
  c.one_of('optimizer.rule', tuple(optimizer.OPTIMIZER_RULES))
  c.one_of('optimizer.weight_decay_on', optimizer.WEIGHT_DECAY_ON)
  c.one_of('schedule.name', optimizer.SCHEDULES)
  c.in_range('schedule.factor', 0, 1, low_open=True, high_open=False)
  c.positive_int('schedule.patience')
  c.positive_int('schedule.max_drops', 0)
  c.in_range('schedule.warmup_epochs', 0, None)
  if c.one_of('eval.select_on', optimizer.SELECT_ON) and (
      c.get('eval.select_on') == 'eval_multicrop_top1_error' and not c.get('eval.ten_crop')):
    c.bad('eval.select_on', c.get('eval.select_on'), 'needs --config.eval.ten_crop=True '
          "(the multi-crop evaluation), or use 'eval_top1_error'.")


def _check_mesh(c: _Checks, num_devices: Optional[int]) -> None:
  """config.mesh on `num_devices`, and the batch sizes over its data axis (the
  one definition of that rule: every process feeds whole data rows)."""
  mesh = c.get('mesh')
  try:
    data = (mesh_shape(mesh, num_devices) or (None,))[0]
  except ValueError as e:
    c.problems.append(str(e))
    return
  for key in ('batch_size', 'eval.batch_size') if data else ():
    value = c.get(key)
    if _is_int(value) and value > 0 and value % data:
      c.bad(key, value, f'must divide over the {data}-way data axis of config.mesh='
            f'{tuple(mesh)} on {num_devices} devices; use a multiple of {data}, '
            f'e.g. {max(data, value // data * data)}.')


def validate(config, *, num_devices: Optional[int] = None,
             dataset_info: Any = None) -> list[str]:
  """Every problem of `config`, one line each; [] when it can run.

  num_devices: check config.mesh and the batch sizes against this many
  devices (jax.device_count()); dataset_info: check config.model.num_classes
  against it (input_pipeline.resolve(config).info). The allowed names are
  imported here from the modules that use them, none of which imports the
  training loop, so that main's command-line checks run before JAX loads.
  """
  c = _Checks(config)
  _check_input(c)
  _check_model(c)
  _check_fine_tuning(c)
  _check_length(c)
  _check_optimizer(c)
  _check_mesh(c, num_devices)
  if dataset_info is not None:
    c.problems += dataset_problems(config, dataset_info)
  return c.problems


def dataset_problems(config, dataset_info: Any) -> list[str]:
  """What `config` asks of the dataset that `dataset_info`
  (input_pipeline.resolve(config).info) does not have: its class count, and at
  least one global batch of training images (an epoch is num_train //
  batch_size steps, input_pipeline.steps_per_epoch)."""
  problems = []
  classes = _get(config, 'model.num_classes')
  if _is_int(classes) and dataset_info.num_classes != classes:
    problems.append(f'config.model.num_classes={classes!r}: the dataset has '
                    f'{dataset_info.num_classes} classes; set '
                    f'--config.model.num_classes={dataset_info.num_classes}.')
  batch = _get(config, 'batch_size')
  if _is_int(batch) and 0 < dataset_info.num_train < batch:
    problems.append(f'config.batch_size={batch!r}: the training split has only '
                    f'{dataset_info.num_train} images, less than one global batch; set '
                    f'--config.batch_size={dataset_info.num_train} or less, or add '
                    'training images.')
  return problems


def workdir_problems(workdir: Optional[str]) -> list[str]:
  """What is wrong with `workdir` as a place to write a run (local paths only)."""
  if workdir is None or not str(workdir).strip():
    return ['--workdir is empty (an unset $WORKDIR?); give the directory for '
            'checkpoints, logs and metrics, e.g. --workdir=/tmp/alexnet.']
  path = str(workdir)
  if '://' in path:   # gs://... : checked when written.
    return []
  path = os.path.abspath(os.path.expanduser(path))
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    what = 'is a file' if existing == path else f'is under {existing}, which is a file'
    return [f'--workdir={workdir} {what}, not a directory; pass a directory path.']
  if not os.access(existing, os.W_OK | os.X_OK):
    what = 'is' if existing == path else f'would be created in {existing}, which is'
    return [f'--workdir={workdir} {what} not writable by this user; pass a '
            'directory you can write to.']
  try:  # Permissions are not everything (/proc, a read-only mount): try it.
    with tempfile.NamedTemporaryFile(dir=existing, prefix='.alexnet_jax-write-check-'):
      pass
  except OSError as e:
    return [f'--workdir={workdir} cannot be created or written in {existing} '
            f'({os.strerror(e.errno) if e.errno else e}); pass a directory on a '
            'writable file system, e.g. --workdir=/tmp/alexnet.']
  return []


def check(config, *, num_devices: Optional[int] = None, dataset_info: Any = None) -> None:
  """Raises ConfigError listing every problem `validate` finds."""
  raise_any(validate(config, num_devices=num_devices, dataset_info=dataset_info))


def raise_any(problems: Sequence[str]) -> None:
  """Raises ConfigError listing `problems`, if there are any."""
  if problems:
    raise ConfigError(format_problems(problems))


def format_problems(problems: Sequence[str]) -> str:
  """One message: how many problems, then one line each."""
  head = ('1 problem' if len(problems) == 1 else f'{len(problems)} problems')
  return (f'cannot start ({head}; nothing was run or written):\n' +
          '\n'.join(f'  - {p}' for p in problems))
