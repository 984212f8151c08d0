"""The one command-line pattern of every tool (main, predict, figures, ensemble,
convert, prepare, stats, summary, report, sweep): a user's mistake is one
line, not a traceback, and one line per event (no TensorFlow start-up
chatter, no libraries' INFO lines).

    def define_flags(): ...           # the tool's flags (cli.config_flag for --config)
    def main(argv): ...               # argv[1:]: the positional arguments, if any
    if __name__ == '__main__':
      cli.run(main, define_flags, args='IMAGE...')   # args=None: none allowed

`run` defines the flags, parses them (a bad value, e.g. --config.batch_size=abc,
is one `ERROR:` line, status 2), refuses positional arguments a tool does not
take (status 2), and runs `main` with the errors a user causes and can fix
printed as one `ERROR:` line on stderr: a config problem (ConfigError) status
2; a missing file or workdir, a value the data or the checkpoint does not
allow, a checkpoint of another config status 1; a signal after a checkpoint
was saved (preemption.Preempted) or a lost process (parallel.HostLost) status
75. Set ALEXNET_JAX_TRACEBACK=1 to see tracebacks instead.
"""

import difflib
import os
import re
import sys
import tempfile
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

ERROR_STATUS = 1   # a user's error found while running (missing data, a bad checkpoint)
USAGE_STATUS = 2   # the command line or the config cannot run; nothing was done
# What a user causes and can fix; anything else is a bug and keeps its traceback.
# OSError covers FileNotFoundError, NotADirectoryError, PermissionError, a full disk.
USER_ERRORS = (OSError, ValueError)


class QuietLibraries(logging.logging.Filter):
  """Drops libraries' INFO chatter (orbax saves, JAX backends) from the console;
  their warnings and all of alexnet_jax's own lines still show."""

  # Warnings that only restate what our own error says next (tfds probing an
  # unprepared data_dir before DatasetNotFoundError names the preparation).
  _RESTATED = ('has no dataset_info.json',)

  def filter(self, record):
    if f'{os.sep}alexnet_jax{os.sep}' in record.pathname:
      return True
    return (record.levelno >= logging.logging.WARNING
            and not any(r in record.getMessage() for r in self._RESTATED))


# TensorFlow's C++ start-up lines, written at import whatever TF_CPP_MIN_LOG_LEVEL says.
_TF_IMPORT_NOISE = re.compile(
    r'^(I\d{4} |WARNING: All log messages before absl::InitializeLog|'
    r'To enable the following instructions)')


def import_tensorflow_quietly():
  """Imports TensorFlow with its C++ INFO lines (oneDNN, CPU features) dropped;
  anything else it writes to stderr is passed on."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # the Python-side INFO lines
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode='w+b') as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [line for line in captured.read().decode(errors='replace').splitlines(True)
              if not _TF_IMPORT_NOISE.match(line)]
      sys.stderr.write(''.join(kept))
  return tf


def quiet_library_logs() -> None:
  """Console: libraries' warnings and errors only, all of alexnet_jax's lines."""
  logging.get_absl_handler().addFilter(QuietLibraries())


def results_only_logs() -> None:
  """For the tools that print results (predict, ensemble, figures, convert):
  warnings and errors only, and no orbax warnings below ERROR."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  logging.set_verbosity(logging.WARNING)
  logging.get_absl_logger().addFilter(
      lambda r: r.levelno >= logging.logging.ERROR or 'orbax' not in r.pathname)


# --------------------------------------------------------------------------
# --config: mistyped keys and missing files, before the flag is defined
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


def _config_arg_problem(value: str) -> Optional[str]:
  """`path:arg` whose get_config(arg) refuses arg (ValueError), in one line."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = value.partition(':')
  try:
    spec = importlib.util.spec_from_file_location('_config_under_check', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.get_config(arg or None)
  except ValueError as e:
    return f'--config={value}: {e}'
  except Exception:  # pylint: disable=broad-except
    return None  # the flag parser says why
  return None


def config_flag_problems(argv: Sequence[str], default_config: Optional[str]) -> list[str]:
  """A --config file that does not exist, or --config.KEY overrides it lacks
  (`unknown_keys`)."""
  value = config_arg(argv)
  if value is not None and not os.path.isfile(value.split(':', 1)[0]):
    here = os.path.dirname(default_config) if default_config else 'configs'
    return [f'--config={value}: no such file. The configs are '
            f'{", ".join(os.path.join(os.path.basename(here), f) for f in sorted(os.listdir(here)) if f.endswith(".py") and not f.startswith("_"))} '
            '(path[:arg], relative to the current directory).']
  if value is not None and ':' in value:  # an argument the config does not take
    problem = _config_arg_problem(value)
    if problem:
      return [problem]
  keys = override_keys(argv)
  config = base_config(argv, default_config) if keys else None
  return [] if config is None else unknown_keys(keys, config)


def fail(message: str, status: int = ERROR_STATUS) -> None:
  """One `ERROR:` line per line of `message` on stderr, then exit `status`."""
  print('\n'.join(f'ERROR: {line}' if i == 0 else line
                  for i, line in enumerate(str(message).splitlines() or [''])),
        file=sys.stderr)
  sys.exit(status)


def config_flag(default: Optional[str], help_text: str = 'Config file (configs/*.py[:arg]).',
                flag_values: flags.FlagValues = flags.FLAGS, sys_argv=None):
  """The common --config flag (ml_collections config_flags, lock_config=True, so
  a mistyped --config.KEY fails instead of being ignored)."""
  return config_flags.DEFINE_config_file('config', default, help_text, flag_values=flag_values,
                                         lock_config=True, sys_argv=sys_argv)


def workdir_flag(help_text: str, required: bool = False) -> None:
  flags.DEFINE_string('workdir', None, help_text)
  if required:
    flags.mark_flags_as_required(['workdir'])


def checkpoint_flag() -> None:
  flags.DEFINE_enum('checkpoint', 'latest', ['latest', 'best'],
                    "The run's latest checkpoint, or its best by validation top-1 error.")


def output_dir_flag(help_text: str, required: bool = False) -> None:
  flags.DEFINE_string('output_dir', None, help_text)
  if required:
    flags.mark_flags_as_required(['output_dir'])


# Errors a user can act on, with their exit status: registered by the modules
# that define them (`user_error`), so that this module imports none of them.
_REGISTERED = []


def user_error(cls, status: int = ERROR_STATUS):
  """Registers `cls` (also as a class decorator): its errors are a user's,
  reported in one line with exit `status` (none if the error's `logged`
  attribute says it was reported already)."""
  _REGISTERED.append((cls, status))
  return cls


def _status_of(error: BaseException) -> Optional[int]:
  """The exit status of an error a user can act on; None for a bug."""
  for cls, status in _REGISTERED:
    if isinstance(error, cls):
      return status
  return ERROR_STATUS if isinstance(error, USER_ERRORS) else None


def guarded(main: Callable[[Sequence[str]], None]) -> Callable[[Sequence[str]], None]:
  """`main` with a user's errors reported in one line and their exit status."""
  def wrapped(argv):
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      status = _status_of(e)
      if status is None or os.environ.get('ALEXNET_JAX_TRACEBACK'):
        raise
      if getattr(e, 'logged', False):
        sys.exit(status)  # Preempted: the loop already logged where it stopped.
      fail(str(e), status)
  return wrapped


def _parse_flags(argv: Sequence[str]) -> list:
  """absl's flag parsing, with a bad flag or value as one ERROR line (status 2)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f'{str(e).rstrip(".")}. See --help.', USAGE_STATUS)


def run(main: Callable[[Sequence[str]], Any], define_flags: Optional[Callable[[], None]] = None,
        *, args: Optional[str] = None, results_only: bool = False,
        optional_args: bool = False, config_default: Optional[str] = '') -> None:
  """Defines the tool's flags, parses them and runs `main` (see the module doc).

  args: what the positional arguments are (e.g. 'IMAGE...'), shown when they are
  missing (unless optional_args); None: the tool takes none, and any is refused
  in one line.
  results_only: tools that print results (predict, ensemble, figures, convert)
  log warnings and errors only.
  config_default: for a tool with a --config flag, its default (None: none).
  A mistyped --config.KEY (with the closest keys) or a missing --config file
  is then one line and status 2, checked before the flag is defined, instead
  of absl's chained tracebacks (`AttributeError: "'lrm'"`, `OSError`).
  """
  if config_default != '':
    problems = config_flag_problems(sys.argv, config_default)
    if problems:
      fail('\n'.join(problems), USAGE_STATUS)
  if define_flags is not None:
    define_flags()

  def checked_main(argv):
    quiet_library_logs()
    if results_only:
      results_only_logs()
    if args is None and len(argv) > 1:
      fail(f'Unexpected arguments: {" ".join(argv[1:])} (this command takes flags only; '
           'see --help).', USAGE_STATUS)
    if args is not None and not optional_args and len(argv) < 2:
      fail(f'Give {args}; see --help.', USAGE_STATUS)
    # Now, not at the tool's import: a mistaken flag or --help is answered in a
    # second, and TensorFlow's C++ start-up lines are dropped from every command.
    import_tensorflow_quietly()
    try:
      status = guarded(main)(argv)
    except SystemExit as e:
      if e.code in (None, 0):
        raise
      # A run that stopped on an error or a signal has closed its checkpoints and
      # said why; exit now, so that libraries' threads dying with the interpreter
      # (orbax, tensorstore: "Event loop is closed") print no traceback after it.
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(e.code if isinstance(e.code, int) else ERROR_STATUS)  # pylint: disable=protected-access
    sys.exit(status if isinstance(status, int) else 0)

  app.run(checked_main, flags_parser=_parse_flags)
