"""The training run's fault boundary: everything the loop (train.py, section 5)
does not do itself when something goes wrong (docs/faults.md).

    with Supervisor(workdir, ...) as supervisor:    # the workdir lock, the watchdog
      state = restore(supervisor.ckpt)
      supervisor.restored(step)                     # from here a signal saves and stops
      for step in ...:                              # the loop
        state = train_step(state, batch)
        stop = supervisor.after_step(step)          # save this step and stop?
        ... evaluation: for batch in supervisor.eval_batches(batches): ...
    # leaving: the last saves commit, then Preempted if a signal stopped the run

Behind it (exit status 75 means: rerun the same command to resume):
- SIGTERM/SIGINT (preemption.PreemptionFlag): from the restore to the end, a signal
  makes the loop save the current step and stop (`Preempted`, 75), after a
  step or between evaluation batches; all processes stop at the same step
  (they agree every `agree_every` steps with
  jax.experimental.multihost_utils.process_allgather). Before the restore and
  after the run a signal exits at once (preemption.exit_on_signals).
- A lost process of a multi-process run (parallel.lost_host): one ERROR line,
  75, without waiting on the lost process.
- A stuck process (preemption.Watchdog): no step and no evaluation batch for
  config.watchdog_minutes: every thread's stack to WORKDIR/errors.log, 75.
- A failed async checkpoint write (Checkpointer.check_writes): the run stops
  at the next step, not a save later.
- One process per workdir (workdir_lock): held, refreshed, released, also by
  an immediate stop.
- A diverged or dead network (an error with a `put_aside = (step, kind)`
  attribute, train.NonFiniteLossError / DeadNetworkError): the checkpoints
  from that step on move to WORKDIR/checkpoints-KIND/.

Why not orbax's and JAX's own preemption support (orbax 0.12.8,
CheckpointManager.reached_preemption -> jax 0.10.2
multihost_utils.reached_preemption_sync_point): its sync manager exists only
once jax.distributed is initialized (a single process, our default, would
never stop); its notice is SIGTERM alone (not Ctrl-C), caught by JAX's C++
runtime rather than Python; and all hosts must call it on every step from
the same start step (its docstring). Our flag covers both signals in one or
many processes and agrees on the step with multihost_utils' all-gather every
`agree_every` steps (the logging interval), so a step pays no host sync.

Tests inject faults through the `hooks` argument (tests/fault_main.py passes
one through train.train_and_evaluate): each is called as hook(event, step) at 'restored', 'trained' (after a step's update) and
'evaluating' (an evaluation of a step starts).
"""

import contextlib
from typing import Callable, Iterable, Iterator, Optional

import jax
from absl import logging
from clu import metric_writers
from etils import epath

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import cli
from alexnet_jax import parallel
from alexnet_jax import preemption
from alexnet_jax import workdir_lock

Preempted = preemption.Preempted
cli.user_error(workdir_lock.WorkdirLockedError)  # another run holds the workdir

Hook = Callable[[str, Optional[int]], None]  # hook(event, step); tests/fault_main.py's faults


class StopRequested(BaseException):
  """A signal reached the run during an evaluation (between batches); the
  Supervisor turns it into Preempted. Not an Exception: the loop's error
  handling (train.EvaluationError) lets it through."""


# --------------------------------------------------------------------------
# The boundary
# --------------------------------------------------------------------------


class Supervisor:
  """The training run's fault boundary (the module docstring says what it
  handles). A context manager around the restore and the loop; it holds the
  run's checkpointer (`ckpt`) and TensorBoard writer (`writer`)."""

  def __init__(self, workdir: epath.Path, *, num_steps: int, agree_every: int,
               watchdog_minutes: float, checkpoints: dict, hooks: Iterable[Hook] = ()):
    """`checkpoints`: ckpt_lib.Checkpointer's keyword arguments (every_steps,
    keep, use_async); `agree_every`: how often processes agree on a stop;
    `hooks`: called at 'restored', 'trained' and 'evaluating' (the tests' faults)."""
    self._hooks = tuple(hooks)
    self.workdir, self.num_steps, self.agree_every = workdir, num_steps, agree_every
    self._watchdog = preemption.Watchdog(watchdog_minutes,
                              None if '://' in str(workdir) else str(workdir / 'errors.log'))
    self._checkpoints = checkpoints
    self.step, self.stopping = 0, False
    self._flag: Optional[preemption.PreemptionFlag] = None
    self._evaluating: Optional[int] = None

  def __enter__(self) -> 'Supervisor':
    is_main = jax.process_index() == 0
    with contextlib.ExitStack() as stack:
      self.lock = stack.enter_context(workdir_lock.WorkdirLock(self.workdir, enabled=is_main))
      stack.enter_context(preemption.stop_context(  # An immediate stop releases the lock.
          lambda: ckpt_lib.resume_point(str(self.workdir)), self.lock.release))
      # TensorBoard only: the loop logs one console line per event itself.
      self.writer = metric_writers.AsyncMultiWriter(
          [metric_writers.SummaryWriter(str(self.workdir))] if is_main else [])
      self.ckpt = ckpt_lib.Checkpointer(str(self.workdir), **self._checkpoints)
      stack.enter_context(self._watchdog)
      self._exits = stack.pop_all()
    return self

  def _emit(self, event: str, step: Optional[int] = None) -> None:
    for hook in self._hooks:
      hook(event, step)

  def restored(self, step: int) -> None:
    """The run starts (or resumes) at `step`: from here on a signal makes the
    loop save and stop."""
    self.step = step
    self._emit('restored')
    self._flag = preemption.PreemptionFlag().__enter__()

  def after_step(self, step: int) -> bool:
    """After the update of `step`: progress for the watchdog, a failed async
    write raised (CheckpointWriteError), the lock refreshed (at most once a
    minute). Returns whether the loop should save this step and stop (a
    signal reached some process; every process returns the same)."""
    self.step = step
    self._watchdog.progress()
    self._emit('trained', step)
    self.ckpt.check_writes()
    self.lock.refresh()
    self.stopping = bool(self._flag and self._flag.any_host(step, self.agree_every))
    return self.stopping

  def eval_batches(self, batches: Iterable) -> Iterator:
    """`batches`, with a signal checked before each (StopRequested; processes
    agree every 16 batches) and progress for the watchdog after each."""
    if self._evaluating != self.step:
      self._evaluating = self.step
      self._emit('evaluating', self.step)
    for i, batch in enumerate(batches, 1):
      if self._flag and self._flag.any_host(i, 16):
        raise StopRequested()
      yield batch
      self._watchdog.progress()
    self.lock.refresh()

  def _disarm(self) -> bool:
    """Signals exit at once again; whether one came while armed."""
    flag, self._flag = self._flag, None
    if flag is None:
      return False
    flag.__exit__()
    return flag.set

  def _on_error(self, error: BaseException) -> None:
    """A lost process stops at once (closing would wait for it at barriers,
    and JAX's runtime may abort this process meanwhile); otherwise in-flight
    saves commit and a diverged or dead run's checkpoints are put aside."""
    lost = parallel.lost_host(error)
    if lost:
      preemption.stop_now(f'ERROR: {lost}')
    with contextlib.suppress(Exception):
      self.ckpt.close()
      self.writer.flush()
    put_aside = getattr(error, 'put_aside', None)
    if put_aside:
      self.ckpt.put_aside_from(*put_aside)

  def _finish(self) -> None:
    """The last saves commit (a signal meanwhile stops the run after them);
    raises Preempted if the run stopped or was signalled."""
    try:
      self.ckpt.close()
      self.writer.flush()
    except Exception as e:
      self._disarm()
      self._on_error(e)
      raise
    signalled = self._disarm()
    if self.stopping:
      logging.warning('Preempted at step %d of %d; checkpoint saved. Run the same command to '
                      'resume.', self.step, self.num_steps)
      raise Preempted(self.step, self.num_steps) from None
    if signalled:
      logging.warning('Preempted after the last step (%d); checkpoint saved. Run the same '
                      'command to finish.', self.step)
      raise Preempted(self.step, self.num_steps) from None

  def __exit__(self, exc_type, exc, tb) -> None:
    try:
      if exc is None or isinstance(exc, StopRequested):
        self.stopping = self.stopping or exc is not None
        self._finish()
      else:
        self._disarm()
        if isinstance(exc, Exception):
          self._on_error(exc)
    finally:
      self._exits.close()
