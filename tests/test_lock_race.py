"""The workdir lock under races (issue 18 item 5): processes released at one
barrier, and starts racing a holder's refresh. Never two holders."""

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time

import pytest

from alexnet_jax import workdir_lock

PROCESSES = 6
TRIALS = 60


def _contender(base: str, index: int, barrier, held) -> None:
  """Trial t: wait at the barrier, try base/t's lock, record it, wait until all
  tried, release. A spawned process (imports only the lock module)."""
  for t in range(TRIALS):
    lock = workdir_lock.WorkdirLock(os.path.join(base, str(t)))
    barrier.wait(timeout=60)
    try:
      lock.__enter__()
      held[t * PROCESSES + index] = 1
    except workdir_lock.WorkdirLockedError:
      pass
    except Exception as e:  # pylint: disable=broad-except  (a race the lock lost)
      print(f'trial {t}: {type(e).__name__}: {e}', flush=True)
      held[t * PROCESSES + index] = 2
    barrier.wait(timeout=60)  # Everyone has tried while the winner still holds.
    if held[t * PROCESSES + index] == 1:
      lock.__exit__(None, None, None)


@pytest.mark.parametrize('left_by', ['nobody', 'a killed run'])
def test_six_processes_at_one_barrier_never_both_hold(tmp_path, left_by):
  """Each trial: an empty workdir, or one whose lock a dead process left (all
  six see it stale at once, one takes it over)."""
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True).stdout.strip()
  for t in range(TRIALS):
    (tmp_path / str(t)).mkdir()
    if left_by != 'nobody':
      (tmp_path / str(t) / 'lock.json').write_text(json.dumps(
          {'host': socket.gethostname(), 'pid': int(dead), 'start_time': 'then'}))
  ctx = multiprocessing.get_context('spawn')
  barrier = ctx.Barrier(PROCESSES)
  held = ctx.Array('b', TRIALS * PROCESSES, lock=False)
  procs = [ctx.Process(target=_contender, args=(str(tmp_path), i, barrier, held))
           for i in range(PROCESSES)]
  for p in procs:
    p.start()
  for p in procs:
    p.join(timeout=120)
    if p.exitcode is None:
      p.kill()
  assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
  outcomes = [list(held[t * PROCESSES:(t + 1) * PROCESSES]) for t in range(TRIALS)]
  bad = [(t, o) for t, o in enumerate(outcomes) if sorted(o) != [0] * (PROCESSES - 1) + [1]]
  assert not bad, f'{len(bad)} of {TRIALS} trials without exactly one holder: {bad[:5]}'

  assert not list(tmp_path.glob('*/*')), 'every lock released, no temporary file left'


def _refresher(workdir: str, ready, seconds: float) -> None:
  with workdir_lock.WorkdirLock(workdir) as lock:
    ready.set()
    end = time.time() + seconds
    while time.time() < end:
      lock._last_refresh = 0.0  # pylint: disable=protected-access  (refresh every time)
      lock.refresh()


def _starter(workdir: str, ready, seconds: float, took) -> None:
  ready.wait()
  end = time.time() + seconds
  while time.time() < end:
    try:
      with workdir_lock.WorkdirLock(workdir):
        took.value += 1
    except workdir_lock.WorkdirLockedError:
      pass
    except Exception as e:  # pylint: disable=broad-except  (a race the lock lost)
      print(f'{type(e).__name__}: {e}', flush=True)
      took.value += 1


def test_a_start_racing_refresh_never_sees_a_half_written_lock(tmp_path):
  """refresh() used to truncate and rewrite lock.json in place: a start that
  read it in between took the live lock over as stale."""
  ctx = multiprocessing.get_context('spawn')
  ready, took = ctx.Event(), ctx.Value('i', 0)
  holder = ctx.Process(target=_refresher, args=(str(tmp_path), ready, 4.0))
  starters = [ctx.Process(target=_starter, args=(str(tmp_path), ready, 3.0, took))
              for _ in range(2)]
  for p in [holder] + starters:
    p.start()
  for p in [holder] + starters:
    p.join(timeout=60)
    if p.exitcode is None:
      p.kill()
  assert [p.exitcode for p in [holder] + starters] == [0, 0, 0]
  assert took.value == 0, f'{took.value} starts took the live lock over (or failed)'
