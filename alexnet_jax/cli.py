"""The command-line tools' console: a user's mistake is one line, not a traceback,
and one line per event (no TensorFlow start-up chatter, no libraries' INFO lines).

    if __name__ == '__main__':
      define_flags()
      cli.run(main)

`run` is absl's app.run with the errors a user causes and can fix (a missing
file or workdir, a value the data or the checkpoint does not allow, a
checkpoint of another config) printed as one `ERROR:` line on stderr, exit
status 1. Set ALEXNET_JAX_TRACEBACK=1 to see the traceback instead.
(`alexnet_jax.main` has its own statuses: 2 config problems, 75 preempted.)
"""

import os
import re
import sys
import tempfile
from typing import Callable, Sequence

from absl import app
from absl import logging

ERROR_STATUS = 1
# What a user causes and can fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError, ValueError)


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


def guarded(main: Callable[[Sequence[str]], None]) -> Callable[[Sequence[str]], None]:
  """`main` with USER_ERRORS reported in one line (exit status 1)."""
  def wrapped(argv):
    try:
      return main(argv)
    except USER_ERRORS as e:
      if os.environ.get('ALEXNET_JAX_TRACEBACK'):
        raise
      print(f'ERROR: {e}', file=sys.stderr)
      sys.exit(ERROR_STATUS)
  return wrapped


def run(main: Callable[[Sequence[str]], None]) -> None:
  def quiet_main(argv):
    quiet_library_logs()
    return guarded(main)(argv)
  app.run(quiet_main)
