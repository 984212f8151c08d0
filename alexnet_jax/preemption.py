"""Stopping on a signal, and the fault hooks the fault tests use.

SIGTERM (preemption) and SIGINT (Ctrl-C) set a flag; the training loop saves a
checkpoint and raises `Preempted`, which main turns into exit status
PREEMPTED_EXIT_CODE (75, EX_TEMPFAIL), the status the launch scripts requeue on.
"""

import functools
import os
import signal
import threading
from typing import Any

import jax
import numpy as np
from absl import logging

from alexnet_jax import cli


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by a signal, checkpoint saved; rerun to resume.


@functools.partial(cli.user_error, status=PREEMPTED_EXIT_CODE)
class Preempted(Exception):
  """The run stopped on SIGTERM/SIGINT after saving a checkpoint (exit status
  PREEMPTED_EXIT_CODE from main); the same command resumes it."""

  def __init__(self, step: int, num_steps: int, state: Any = None):
    super().__init__(f'Preempted at step {step} of {num_steps}; checkpoint saved. Run the same '
                     'command to resume.')
    self.step, self.state = step, state


class PreemptionFlag:
  """Set by SIGTERM (preemption) or SIGINT (Ctrl-C); the loop saves a
  checkpoint and stops. A second Ctrl-C aborts at once (KeyboardInterrupt)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.set = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def _handle(self, signum, frame):
    del frame
    if self.set and signum == signal.SIGINT:
      raise KeyboardInterrupt
    logging.warning('%s received: saving a checkpoint and stopping%s.',
                    signal.Signals(signum).name,
                    ' (Ctrl-C again aborts at once)' if signum == signal.SIGINT else '')
    self.set = True

  def __exit__(self, *exc):
    for s, previous in self._previous.items():
      signal.signal(s, previous)

  def any_host(self, step: int, every: int) -> bool:
    """Whether to stop now. One process: as soon as the signal came. Several:
    all must stop at the same step, so they agree every `every` steps (one
    all-gather then, instead of a host sync on every step)."""
    if jax.process_count() == 1:
      return self.set
    if step % every:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(multihost_utils.process_allgather(np.int32(self.set)).any())


def fault_point(event: str, step: int) -> None:
  """Test hook: ALEXNET_JAX_FAULT='EVENT@STEP[:SIGNAL]' sends SIGNAL (default
  KILL) to this process at that point of the loop. Events: 'trained' (after
  the update of STEP), 'saved' (save of STEP started; an async write is in
  flight), 'evaluated' (after STEP's evaluation and best/ save).
  tests/test_faults.py kills runs at chosen points with it."""
  spec = os.environ.get('ALEXNET_JAX_FAULT')
  if not spec:
    return
  where, _, sig = spec.partition(':')
  if where == f'{event}@{step}':
    os.kill(os.getpid(), getattr(signal, 'SIG' + (sig or 'KILL')))

