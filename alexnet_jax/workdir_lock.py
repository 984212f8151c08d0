"""One training process per workdir: a lock file naming its holder.

`workdir/lock.json` holds {host, pid, start_time}. A second start on the same
workdir is refused with the holder's name. A lock left by a killed process is
stale and taken over with a warning: on the same host when its pid is gone
(or is this process's own, as in a restarted container);
on any host when it was not refreshed (`refresh()`, called by the training
loop at every log step) for `stale_after_s`.

Local (POSIX) workdirs: the lock file is never seen empty or half-written.
It is written complete under a temporary name and hard-linked into place
(`os.link` fails if lock.json exists: an atomic create with its content), and
`refresh()` replaces it with `os.replace`. A stale lock is removed only by the
process holding `lock.json.takeover` (an atomic mkdir), after reading it again,
so two starters cannot both take one stale lock over. Buckets (gs://...) have
no atomic create through this path: there the lock is written and read back,
which catches a second start seconds later but not two starts within the same
second. On several hosts only process 0 holds the lock.
"""

import contextlib
import json
import os
import socket
import time
import uuid
from typing import Optional

from absl import logging
from etils import epath

STALE_AFTER_S = 30 * 60
TAKEOVER_STALE_S = 60  # a takeover guard this old was left by a killed starter


class WorkdirLockedError(RuntimeError):
  """Another live process trains in this workdir."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """Context manager: holds `workdir/lock.json` while training."""

  def __init__(self, workdir, *, enabled: bool = True, stale_after_s: float = STALE_AFTER_S):
    self.path = epath.Path(workdir) / 'lock.json'
    self.enabled = enabled
    self.stale_after_s = stale_after_s
    self.record = {'host': socket.gethostname(), 'pid': os.getpid(),
                   'start_time': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
    self._last_refresh = 0.0

  @property
  def _local(self) -> bool:
    return '://' not in str(self.path)

  def _holder(self) -> Optional[dict]:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (ValueError, OSError):
      return {}  # Unreadable (not written by this code): treated as stale.

  def _stale(self, holder: dict) -> Optional[str]:
    """Why `holder` no longer holds the lock, or None if it does."""
    if not holder:
      return 'unreadable lock file'
    if holder.get('host') == self.record['host']:
      pid = int(holder.get('pid', -1))
      if pid == os.getpid():  # A restarted container reuses pids: not another process.
        return f'its pid {pid} is this process'
      if not _pid_alive(pid):
        return f'process {pid} on {holder.get("host")} is gone'
    try:
      age = time.time() - self.path.stat().mtime
    except FileNotFoundError:
      return None  # Released meanwhile: the caller looks again.
    if age > self.stale_after_s:
      return f'not refreshed for {age / 60:.0f} min'
    return None

  def _write_temporary(self) -> str:
    """This process's record, complete, under a temporary name beside lock.json."""
    tmp = f'{self.path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp'
    with open(tmp, 'w') as f:
      f.write(json.dumps(self.record))
    return tmp

  def _create(self) -> bool:
    if not self._local:
      if self.path.exists():
        return False
      self.path.write_text(json.dumps(self.record))
      return self._holder() == self.record
    tmp = self._write_temporary()
    try:
      os.link(tmp, str(self.path))  # Fails if lock.json exists; else it appears whole.
      return True
    except FileExistsError:
      return False
    finally:
      os.unlink(tmp)

  @contextlib.contextmanager
  def _takeover_guard(self):
    """Yields True while this process alone may remove a stale lock.json."""
    if not self._local:
      yield True
      return
    guard = f'{self.path}.takeover'
    try:
      os.mkdir(guard)
    except FileExistsError:
      with contextlib.suppress(FileNotFoundError):
        if time.time() - os.stat(guard).st_mtime > TAKEOVER_STALE_S:
          os.rmdir(guard)  # Its starter was killed mid-takeover.
      yield False
      return
    try:
      yield True
    finally:
      os.rmdir(guard)

  def _take_over(self, holder: dict, why: str) -> None:
    """Removes lock.json if it still holds `holder` (and another process is
    not taking it over at this moment)."""
    with self._takeover_guard() as mine:
      if not mine:
        time.sleep(0.05)  # Another starter is taking it over; then look again.
        return
      if self._holder() != holder:
        return  # Changed meanwhile: look again.
      logging.warning('Taking over the stale lock %s (%s): %s', self.path, why, holder)
      self.path.unlink(missing_ok=True)

  def __enter__(self):
    if not self.enabled:
      return self
    for _ in range(100):
      if self._create():
        self._last_refresh = time.time()
        return self
      holder = self._holder()
      if holder is None:
        continue  # Released meanwhile.
      why = self._stale(holder)
      if why is None:
        if self.path.exists():
          raise WorkdirLockedError(
              f'{self.path.parent} is in use by process {holder.get("pid")} on host '
              f'{holder.get("host")} (started {holder.get("start_time")}). Wait for it to '
              f'finish or stop it, or use another --workdir. If that process is gone, '
              f'delete {self.path}.')
        continue  # Released meanwhile.
      self._take_over(holder, why)
    raise WorkdirLockedError(f'Could not take the lock {self.path}; other processes race '
                             'for this workdir.')

  def refresh(self) -> None:
    """Marks the lock as live (at most once a minute), replacing the file whole."""
    if self.enabled and time.time() - self._last_refresh > 60:
      if self._local:
        os.replace(self._write_temporary(), str(self.path))
      else:
        self.path.write_text(json.dumps(self.record))
      self._last_refresh = time.time()

  def release(self) -> None:
    """Removes lock.json if this process holds it."""
    if self.enabled and self._holder() == self.record:
      self.path.unlink(missing_ok=True)

  def __exit__(self, *exc):
    self.release()
