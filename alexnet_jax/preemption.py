"""Stopping with exit status 75 (PREEMPTED_EXIT_CODE, EX_TEMPFAIL): stopped,
nothing unsaved is lost, the same command resumes; the launch scripts restart
the job on it. The pieces alexnet_jax/supervisor.py (the training run's fault
boundary) and alexnet_jax/parallel.py (a lost process) put together:

- `exit_on_signals`, installed by main.py before its heavy imports: until the
  loop's `PreemptionFlag` takes over, SIGTERM and SIGINT exit at once with one
  line (outside the loop nothing is unsaved).
- `PreemptionFlag`: in the loop, a signal sets a flag; the loop saves and
  stops (`Preempted`; main exits 75 on it).
- `Watchdog`: no `progress()` for config.watchdog_minutes: every thread's
  stack to WORKDIR/errors.log, exit 75.
- `stop_now`: the one immediate way out (the watchdog, a lost process, a
  second Ctrl-C). It writes its line to the real stderr, runs the cleanups of
  `stop_context` (the workdir lock's release) and leaves with os._exit:
  interpreter shutdown would wait on library threads and distributed barriers.

This module imports nothing heavy: main installs it before TensorFlow's import.
"""

import contextlib
import faulthandler
import functools
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional

from absl import logging

from alexnet_jax import cli


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped, nothing unsaved lost; rerun to resume.
SIGNALS = (signal.SIGTERM, signal.SIGINT)


@functools.partial(cli.user_error, status=PREEMPTED_EXIT_CODE)
class Preempted(Exception):
  """The run stopped on SIGTERM/SIGINT after saving a checkpoint (exit status
  PREEMPTED_EXIT_CODE from main); the same command resumes it."""

  logged = True  # The loop logged where it stopped: main prints nothing more.

  def __init__(self, step: int, num_steps: int):
    super().__init__(f'Preempted at step {step} of {num_steps}; checkpoint saved. Run the same '
                     'command to resume.')
    self.step = step


# --------------------------------------------------------------------------
# Stopping at once: one line, the lock released, os._exit
# --------------------------------------------------------------------------

_stderr_fd = 2          # the real stderr (TensorFlow's import captures fd 2 for a while)
_resume_point: Optional[Callable[[], str]] = None   # 'The last checkpoint is step ...'
_cleanups: list = []    # run before an immediate exit (the workdir lock)
_stopping = threading.Lock()


def resume_point() -> str:
  """Where a rerun resumes, as a sentence ('' before the workdir is known)."""
  try:
    return _resume_point() if _resume_point else ''
  except Exception:  # pylint: disable=broad-except
    return ''


@contextlib.contextmanager
def stop_context(where: Callable[[], str], cleanup: Callable[[], None]):
  """While training in a workdir: immediate stops say `where()` the rerun
  resumes and run `cleanup` (release the workdir lock) before exiting."""
  global _resume_point
  previous, _resume_point = _resume_point, where
  _cleanups.append(cleanup)
  try:
    yield
  finally:
    _cleanups.remove(cleanup)
    _resume_point = previous


def stop_now(message: str, status: int = PREEMPTED_EXIT_CODE) -> None:
  """Writes `message` as one line to stderr, runs the cleanups and exits with
  `status` at once, from any thread (a second caller waits for the first)."""
  _stopping.acquire()
  for cleanup in reversed(_cleanups):
    with contextlib.suppress(Exception):
      cleanup()
  for stream in (sys.stdout, sys.stderr):  # Lines logged before this one come first.
    with contextlib.suppress(Exception):
      stream.flush()
  with contextlib.suppress(OSError):
    os.write(_stderr_fd, (' '.join(message.split()) + '\n').encode(errors='replace'))
  os._exit(status)  # pylint: disable=protected-access


def exit_on_signal(signum, frame) -> None:
  """The signal handler of `exit_on_signals`."""
  del frame
  stop_now(f'{signal.Signals(signum).name} received outside the training loop (nothing '
           f'unsaved): stopping with exit status {PREEMPTED_EXIT_CODE}. Run the same command '
           'to resume.')


def exit_on_signals() -> None:
  """From here on (until the training loop's flag takes over), SIGTERM and SIGINT exit
  with status 75 and one line, instead of -15, or a KeyboardInterrupt
  traceback (or 'Exception ignored ... KeyboardInterrupt' after the run)."""
  global _stderr_fd
  if threading.current_thread() is not threading.main_thread():
    return
  if _stderr_fd == 2:
    with contextlib.suppress(OSError):
      _stderr_fd = os.dup(2)
  for s in SIGNALS:
    signal.signal(s, exit_on_signal)


# --------------------------------------------------------------------------
# The training loop: save and stop on a signal; stop when stuck
# --------------------------------------------------------------------------


class PreemptionFlag:
  """Set by SIGTERM (preemption) or SIGINT (Ctrl-C); the loop saves a
  checkpoint and stops. A second Ctrl-C stops at once without saving: exit
  status 75 under main (exit_on_signals), else KeyboardInterrupt."""

  def __init__(self):
    self.set = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
    return self

  def _handle(self, signum, frame):
    del frame
    if self.set and signum == signal.SIGINT:
      if self._previous.get(signum) is exit_on_signal:  # under main
        stop_now(f'SIGINT again: stopping at once without saving. {resume_point()} Run the '
                 'same command to resume.')
      raise KeyboardInterrupt
    logging.warning('%s received: saving a checkpoint and stopping%s.',
                    signal.Signals(signum).name,
                    ' (Ctrl-C again aborts at once)' if signum == signal.SIGINT else '')
    self.set = True

  def __exit__(self, *exc):
    for s, previous in self._previous.items():
      signal.signal(s, previous)
    self._previous = {}

  def any_host(self, step: int, every: int) -> bool:
    """Whether to stop now. One process: as soon as the signal came. Several:
    all must stop at the same step, so they agree every `every` steps (one
    all-gather then, instead of a host sync on every step)."""
    import jax  # pylint: disable=g-import-not-at-top  (this module stays light)
    if jax.process_count() == 1:
      return self.set
    if step % every:
      return False
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(multihost_utils.process_allgather(np.int32(self.set)).any())


# --------------------------------------------------------------------------
# The watchdog
# --------------------------------------------------------------------------


class Watchdog:
  """While active: if `progress()` is not called for `minutes`, writes every
  thread's stack to `dump_path` (stderr if None or unwritable) and stops with
  status 75 (`stop_now`). minutes <= 0: off.

  Progress is a finished training step or a dispatched evaluation batch; the
  watchdog runs from the restore to the end of the run, so the restore, the
  first compile of each step, the input pipeline's start and checkpoint
  writes all fall within one interval and must fit in it (configs/ilsvrc.py).
  """

  def __init__(self, minutes: float, dump_path: Optional[str] = None):
    self.timeout_s = 60.0 * minutes
    self.dump_path = dump_path
    self.last = time.monotonic()
    self._done = threading.Event()

  def progress(self) -> None:
    self.last = time.monotonic()

  def __enter__(self):
    if self.timeout_s > 0:
      self.last = time.monotonic()
      threading.Thread(target=self._watch, name='alexnet_jax-watchdog', daemon=True).start()
    return self

  def __exit__(self, *exc):
    self._done.set()

  def _watch(self) -> None:
    while not self._done.wait(min(10.0, self.timeout_s / 4)):
      idle = time.monotonic() - self.last
      if idle > self.timeout_s and not self._done.is_set():
        self._fire(idle)

  def _dump(self) -> str:
    """Every thread's stack to dump_path (or stderr); where it went."""
    header = (f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")} watchdog: no progress; stacks of '
              f'process {os.getpid()} ===\n')
    try:
      with open(self.dump_path, 'a') as f:
        f.write(header)
        f.flush()
        faulthandler.dump_traceback(f, all_threads=True)
      return self.dump_path
    except (OSError, TypeError):  # TypeError: no dump_path
      os.write(_stderr_fd, header.encode())
      faulthandler.dump_traceback(_stderr_fd, all_threads=True)
      return 'stderr above'

  def _fire(self, idle: float) -> None:
    where = self._dump()
    stop_now(
        f'ERROR: No training step or evaluation batch completed for {idle / 60:.1f} minutes '
        f'(config.watchdog_minutes={self.timeout_s / 60:g}): this process or another process '
        'of the run is stuck (a stopped process, a hung read or collective). Every thread\'s '
        f'stack: {where}. {resume_point()} Stopping with exit status '
        f'{PREEMPTED_EXIT_CODE}: run the same command to resume.')
