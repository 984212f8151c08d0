"""One training process per workdir: a lock file naming its holder.

`workdir/lock.json` holds {host, pid, start_time}. A second start on the same
workdir is refused with the holder's name. A lock left by a killed process is
stale and taken over with a warning: on the same host when its pid is gone
(or is this process's own, as in a restarted container);
on any host when it was not refreshed (`refresh()`, called by the training
loop at every log step) for `stale_after_s`.

Local (POSIX) workdirs are locked atomically (O_CREAT | O_EXCL). Buckets
(gs://...) have no atomic create through this path: there the lock is written
and read back, which catches a second start seconds later but not two starts
within the same second. On several hosts only process 0 holds the lock.
"""

import json
import os
import socket
import time
from typing import Optional

from absl import logging
from etils import epath

STALE_AFTER_S = 30 * 60


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

  def _holder(self) -> Optional[dict]:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (ValueError, OSError):
      return {}  # Half-written: treat as stale (its writer died mid-write).

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
    age = time.time() - self.path.stat().mtime
    if age > self.stale_after_s:
      return f'not refreshed for {age / 60:.0f} min'
    return None

  def _create(self) -> bool:
    text = json.dumps(self.record)
    if '://' in str(self.path):
      if self.path.exists():
        return False
      self.path.write_text(text)
      return self._holder() == self.record
    try:
      fd = os.open(str(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    return True

  def __enter__(self):
    if not self.enabled:
      return self
    for _ in range(3):
      if self._create():
        self._last_refresh = time.time()
        return self
      holder = self._holder()
      if holder is None:
        continue  # Released meanwhile.
      why = self._stale(holder)
      if why is None:
        raise WorkdirLockedError(
            f'{self.path.parent} is in use by process {holder.get("pid")} on host '
            f'{holder.get("host")} (started {holder.get("start_time")}). Wait for it to finish '
            f'or stop it, or use another --workdir. If that process is gone, delete {self.path}.')
      logging.warning('Taking over the stale lock %s (%s): %s', self.path, why, holder)
      self.path.unlink(missing_ok=True)
    raise WorkdirLockedError(f'Could not take the lock {self.path}; another process races '
                             'for this workdir.')

  def refresh(self) -> None:
    """Marks the lock as live (at most once a minute)."""
    if self.enabled and time.time() - self._last_refresh > 60:
      self.path.write_text(json.dumps(self.record))
      self._last_refresh = time.time()

  def __exit__(self, *exc):
    if self.enabled and self._holder() == self.record:
      self.path.unlink(missing_ok=True)
