"""The whole config checked at once, before a workdir is touched.

    problems = validate(config, num_devices=8, dataset_info=info)  # list[str]
    check(config, ...)                       # raises ConfigError listing them all

Each problem names the key, the bad value and the fix. `unknown_keys` answers
a mistyped `--config.KEY` with the closest existing keys, as absl does for
mistyped flags. The allowed names come from the code that uses them
(models.PRESETS, train.SCHEDULES, data_sources.SOURCES, stats.MEAN_MODES, ...).
"""

import difflib
import math
import numbers
import os
import re
from typing import Any, Iterable, Mapping, Optional, Sequence


class ConfigError(ValueError):
  """The config (or the workdir) cannot run; the message lists every problem."""


# --------------------------------------------------------------------------
# Unknown keys
# --------------------------------------------------------------------------


def flat_keys(config: Mapping[str, Any], prefix: str = '') -> list[str]:
  """Every dotted key of `config`, inner nodes included ('model', 'model.lrn')."""
  keys = []
  for k, v in config.items():
    keys.append(prefix + k)
    if hasattr(v, 'items'):   # a ConfigDict or dict
      keys += flat_keys(v, f'{prefix}{k}.')
  return keys


def override_keys(argv: Sequence[str], name: str = 'config') -> list[str]:
  """The KEYs of `--config.KEY[=VALUE]` / `--noconfig.KEY` arguments in `argv`."""
  pattern = re.compile(rf'^--?(?:no)?{re.escape(name)}\.([^=]+)')
  return [m.group(1) for m in map(pattern.match, argv) if m]


def unknown_keys(keys: Iterable[str], config: Mapping[str, Any]) -> list[str]:
  """One line per key in `keys` that `config` lacks, with the closest keys."""
  known = flat_keys(config)
  problems = []
  for key in keys:
    if key in known:
      continue
    parent, _, leaf = key.rpartition('.')
    if parent and parent not in known:   # A mistyped group: compare whole keys.
      parent, leaf = '', key
    siblings = [k for k in known if k.rpartition('.')[0] == parent]
    names = {k.rpartition('.')[2]: k for k in siblings}
    close = [names[n] for n in difflib.get_close_matches(leaf, names, n=3, cutoff=0.6)]
    close += [k for n, k in names.items() if n.startswith(leaf) and k not in close]
    if not parent:
      close = difflib.get_close_matches(key, known, n=3, cutoff=0.8) or close
    hint = (f' Did you mean: {", ".join(close[:3])}?' if close else
            f' Keys under {parent}: {", ".join(siblings)}.' if parent and siblings else
            f' config.{parent} is a value, not a group of keys.' if parent else
            f' Top-level keys: {", ".join(siblings)}.')
    problems.append(f"Unknown config key '{key}'.{hint}")
  return problems


def config_arg(argv: Sequence[str]) -> Optional[str]:
  """The value of argv's --config flag (`path[:arg]`), None without one."""
  value = None
  for i, arg in enumerate(argv):
    if re.match(r'^--?config=', arg):
      value = arg.split('=', 1)[1]
    elif re.fullmatch(r'--?config', arg) and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def base_config(argv: Sequence[str], default_config: str):
  """The config of argv's --config file (default_config without one), without
  its overrides; None if it does not load (the flag parser then says why)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  value = config_arg(argv)
  args = ['main'] + ([f'--config={value}'] if value is not None else [])
  fv = flags.FlagValues()
  try:
    config_flags.DEFINE_config_file('config', default_config, flag_values=fv,
                                    lock_config=False, sys_argv=args)
    fv(args)
    return fv['config'].value
  except Exception:  # pylint: disable=broad-except
    return None


def config_flag_problems(argv: Sequence[str], default_config: str) -> list[str]:
  """A --config file that does not exist, or --config.KEY overrides it lacks
  (`unknown_keys`)."""
  value = config_arg(argv)
  if value is not None and not os.path.isfile(value.split(':', 1)[0]):
    here = os.path.dirname(default_config)
    return [f'--config={value}: no such file. The configs are '
            f'{", ".join(os.path.join(os.path.basename(here), f) for f in sorted(os.listdir(here)) if f.endswith(".py") and not f.startswith("_"))} '
            '(path[:arg], relative to the current directory).']
  keys = override_keys(argv)
  config = base_config(argv, default_config) if keys else None
  return [] if config is None else unknown_keys(keys, config)


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


def validate(config, *, num_devices: Optional[int] = None,
             dataset_info: Any = None) -> list[str]:
  """Every problem of `config`, one line each; [] when it can run.

  num_devices: check config.mesh and the batch sizes against this many
  devices (jax.device_count()); dataset_info: check config.model.num_classes
  against it (input_pipeline.dataset_info(config)).
  """
  # Imported here: train imports this module.
  from alexnet_jax import data_sources  # pylint: disable=g-import-not-at-top
  from alexnet_jax import models  # pylint: disable=g-import-not-at-top
  from alexnet_jax import stats as stats_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  problems = []

  def bad(key, value, fix):
    problems.append(f'config.{key}={value!r}: {fix}')

  def one_of(key, allowed, suggest=True):
    value = _get(config, key)
    if value not in allowed:
      close = suggest and difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.6)
      bad(key, value, f'use one of {", ".join(map(repr, allowed))}' +
          (f' (--config.{key}={close[0]}?).' if close else '.'))
      return False
    return True

  def positive_int(key, minimum=1):
    value = _get(config, key)
    if value is not None and not (_is_int(value) and value >= minimum):
      bad(key, value, f'must be an integer >= {minimum}.')
      return False
    return value is not None

  def in_range(key, low, high, low_open=False, high_open=True):
    value = _get(config, key)
    if value is None:
      return
    ok = _is_number(value) and (value > low if low_open else value >= low) and (
        high is None or (value < high if high_open else value <= high))
    if not ok:
      interval = (('(' if low_open else '[') + f'{low}, ' +
                  ('inf)' if high is None else f'{high}' + (')' if high_open else ']')))
      bad(key, value, f'must be a number in {interval}.')

  # ------------------------------------------------------------ data, input
  if one_of('dataset.source', data_sources.SOURCES):
    try:  # a folder or prepared_dir the named source would ignore
      data_sources.source_name(config)
    except ValueError as e:
      problems.append(str(e))
  one_of('input.mean', stats_lib.MEAN_MODES)
  positive_int('dataset.shuffle_buffer')
  positive_int('dataset.prefetch', 0)
  positive_int('dataset.threads', 0)
  in_range('input.pca_lighting', 0, None)
  scale = _get(config, 'input.pixel_scale')
  if isinstance(scale, (tuple, list)):  # one per RGB channel (configs/torchvision.py)
    if len(scale) != 3 or not all(_is_number(v) and v > 0 for v in scale):
      bad('input.pixel_scale', scale, 'must be a number > 0 or 3 of them (R, G, B).')
  else:
    in_range('input.pixel_scale', 0, None, low_open=True)
  if positive_int('input.resize_size') and positive_int('model.input_size'):
    if config.input.resize_size < config.model.input_size:
      bad('input.resize_size', config.input.resize_size,
          f'must be >= config.model.input_size={config.model.input_size} (the crops '
          'are cut from the resized image).')

  # ------------------------------------------------------------------ model
  model_ok = one_of('model.name', sorted(models.PRESETS))
  for key in ('model.dtype', 'model.param_dtype'):
    if _get(config, key) is not None:
      model_ok &= one_of(key, sorted(models._DTYPES), suggest=False)  # pylint: disable=protected-access
  for key, lookup in (('model.activation', models._activation),  # pylint: disable=protected-access
                      ('model.kernel_init', models._kernel_init)):  # pylint: disable=protected-access
    if _get(config, key) is not None:
      try:
        lookup(_get(config, key))
      except ValueError as e:
        model_ok = False
        bad(key, _get(config, key), f'{e}'.split('; ', 1)[-1].rstrip('.') + '.')
  model_ok &= positive_int('model.num_classes')
  in_range('model.dropout_rate', 0, 1)
  if model_ok:
    try:
      models.create_model(config.model)
    except (ValueError, TypeError) as e:
      problems.append(f'config.model: {e}')

  # ------------------------------------------------------------ fine-tuning
  init_from = _get(config, 'init_from')
  if init_from is not None:
    if not isinstance(init_from, str) or not init_from.strip():
      bad('init_from', init_from, 'must be a path (a workdir, its best/ directory or a '
          'checkpoint step directory), or unset.')
    elif '://' not in init_from and not os.path.exists(init_from):
      bad('init_from', init_from, 'does not exist; give a workdir (its latest checkpoint), '
          'its best/ directory or a checkpoint step directory (alexnet_jax.convert writes one).')
  reinit = _get(config, 'init_reinit', ())
  if not (isinstance(reinit, (tuple, list)) and all(isinstance(x, str) for x in reinit)):
    bad('init_reinit', reinit, 'must be a tuple of layer names, e.g. '
        '--config.init_reinit="(\'fc8\',)".')

  # ------------------------------------------------------ training length
  for key in ('batch_size', 'eval.batch_size', 'log_every_steps',
              'checkpoint_every_steps', 'keep_checkpoints'):
    positive_int(key)
  steps, epochs = _get(config, 'num_train_steps', -1), _get(config, 'num_epochs')
  if not _is_int(steps):
    bad('num_train_steps', steps, 'must be an integer (> 0, or <= 0 to use num_epochs).')
  elif steps <= 0 and not (_is_number(epochs) and epochs > 0):
    bad('num_epochs', epochs, 'must be > 0 (or set config.num_train_steps > 0).')
  in_range('eval.every_epochs', 0, None, low_open=True)

  # -------------------------------------------------------------- optimizer
  in_range('optimizer.learning_rate', 0, None, low_open=True)
  in_range('optimizer.momentum', 0, 1)
  in_range('optimizer.weight_decay', 0, None)
  one_of('optimizer.rule', tuple(train.OPTIMIZER_RULES))
  one_of('optimizer.weight_decay_on', train.WEIGHT_DECAY_ON)
  one_of('schedule.name', train.SCHEDULES)
  in_range('schedule.factor', 0, 1, low_open=True, high_open=False)
  positive_int('schedule.patience')
  positive_int('schedule.max_drops', 0)
  in_range('schedule.warmup_epochs', 0, None)

  # ---------------------------------------------------------- mesh, batch
  mesh = _get(config, 'mesh')
  try:
    data = (mesh_shape(mesh, num_devices) or (None,))[0]
  except ValueError as e:
    problems.append(str(e))
    data = None
  if data:
    for key in ('batch_size', 'eval.batch_size'):
      value = _get(config, key)
      if _is_int(value) and value > 0 and value % data:
        bad(key, value, f'must divide over the {data}-way data axis of config.mesh='
            f'{tuple(mesh)} on {num_devices} devices; use a multiple of {data}, '
            f'e.g. {max(data, value // data * data)}.')

  if dataset_info is not None:
    problems += dataset_problems(config, dataset_info)
  return problems


def dataset_problems(config, dataset_info: Any) -> list[str]:
  """What `config` asks of the dataset that `dataset_info`
  (input_pipeline.dataset_info(config)) does not have: its class count, and at
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
