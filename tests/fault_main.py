r"""alexnet_jax.main with one fault injected at a chosen point (the fault tests'
entry point; production code has no fault hooks):

    python tests/fault_main.py --fault=EVENT[@STEP][:SIGNAL][+SECONDS] <main's flags>

sends SIGNAL (default KILL; STOP stops the process) to this process when the
run reaches EVENT (of STEP), SECONDS later from another thread if given (to
land inside the slow call that follows). SIGNAL 'HANG' blocks the calling
thread for good instead (a hung read).

Events: 'import' (main's signal handling is installed; TensorFlow's import
follows), 'restored' (after the restore, before the loop), 'trained@STEP'
(after the update of STEP), 'saved@STEP' (the save of STEP started; an async
write is in flight), 'evaluating@STEP' (an evaluation of STEP starts),
'evaluated@STEP' (STEP's evaluation offered to best/), 'done' (after the
`Done:` line). 'restored', 'trained' and 'evaluating' come through the
supervisor's hooks (main's `hooks` argument), the saves through the checkpointer's methods.
"""

import os
import signal
import sys
import threading
from typing import Optional

if __name__ == '__main__':  # `python tests/fault_main.py`: the repository root, not tests/.
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Fault:
  """hook(event, step): the fault of `spec` when (event, step) matches it."""

  def __init__(self, spec: str):
    spec, _, self.delay = spec.partition('+')
    self.where, _, self.signal = spec.partition(':')

  def __call__(self, event: str, step: Optional[int] = None) -> None:
    if self.where == (event if step is None else f'{event}@{step}'):
      fault_point(self.signal, self.delay)


def fault_point(sig: str, delay: str = '') -> None:
  """Sends SIG (or hangs) now or `delay` seconds from now."""
  if sig == 'HANG':
    threading.Event().wait()
  signum = getattr(signal, 'SIG' + (sig or 'KILL'))
  if delay:
    timer = threading.Timer(float(delay), os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()
  else:
    os.kill(os.getpid(), signum)


def _after(method, fault: Fault, event: str):
  def wrapped(self, step, *args, **kwargs):
    result = method(self, step, *args, **kwargs)
    fault(event, step)
    return result
  return wrapped


def run(spec: str) -> None:
  """Runs main (its flags in sys.argv) with the fault `spec`."""
  from alexnet_jax import main as main_lib  # pylint: disable=g-import-not-at-top  (light)
  fault = Fault(spec)
  run_main = main_lib.main

  def main(argv):  # cli.run has imported TensorFlow: the rest is cheap to import now.
    from alexnet_jax import checkpoint  # pylint: disable=g-import-not-at-top
    checkpoint.Checkpointer.save = _after(checkpoint.Checkpointer.save, fault, 'saved')
    checkpoint.Checkpointer.save_best = _after(checkpoint.Checkpointer.save_best, fault,
                                               'evaluated')
    run_main(argv, hooks=[fault])
    fault('done')

  main_lib.main = main
  fault_after_install = main_lib.preemption.exit_on_signals

  def exit_on_signals():  # main.run installs its handling first, then TensorFlow's import.
    fault_after_install()
    fault('import')
  main_lib.preemption.exit_on_signals = exit_on_signals
  main_lib.run()


if __name__ == '__main__':
  specs = [a for a in sys.argv[1:] if a.startswith('--fault=')]
  sys.argv = [sys.argv[0]] + [a for a in sys.argv[1:] if not a.startswith('--fault=')]
  run(specs[-1][len('--fault='):] if specs else '')
