"""The command-line tools' common ending: a user's mistake is one line, not a traceback.

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
import sys
from typing import Callable, Sequence

from absl import app

ERROR_STATUS = 1
# What a user causes and can fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError, ValueError)


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
  app.run(guarded(main))
