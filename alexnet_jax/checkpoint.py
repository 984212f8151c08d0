"""Orbax checkpoints: the last K steps plus the best by validation error.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint intact (and
`cleanup_tmp_directories` reclaims the partial one on the next start).
Every checkpoint carries small JSON records beside the train state, written
with it (one atomic commit):

  description: the run config and the parameter shapes, checked on restore
               (`resume_policy.check_resume` decides what may change);
  progress:    what the loop needs to continue exactly where it stopped
               (cumulative wall time, the pending train-metric window, the
               last logged train metrics, the last evaluated step);
  checksums:   one checksum per array of the state (`array_checksums`),
               verified on every read, so that flipped bits in the stored
               data are caught instead of trained on.

A step that cannot be read or fails its checksums is moved aside (never
deleted) and the newest step that restores is used instead. A failed write is
reported at once as CheckpointWriteError naming its cause (full disk, quota,
read-only file system, permissions) and fix, with the partial directory
removed; orbax's logged tracebacks of it go to WORKDIR/errors.log.
"""

import contextlib
import errno
import json
import logging as pylogging
import os
import re
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from alexnet_jax import parallel

TMP_SUFFIX = '.orbax-checkpoint-tmp'


class CheckpointMismatchError(ValueError):
  """The checkpoint in the workdir was written by an incompatible config."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (a full disk, a read-only file system...)."""

  def __str__(self):
    return self.strerror


class CheckpointCorruptError(ValueError):
  """A checkpoint's arrays do not match the checksums saved with them."""


# --------------------------------------------------------------------------
# Checksums of the arrays
# --------------------------------------------------------------------------

CHECKSUM_ALGORITHM = 'alexnet_jax.mixsum32x2/1'  # _leaf_checksum


def _key(path) -> str:
  """'params/conv1/kernel' for a TrainState's and a restored dict's leaf alike."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))
                  for k in path)


def _words(x: jax.Array) -> jax.Array:
  """x's bit patterns as uint32, same shape (8-byte types: a trailing axis of 2)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32)


def _mix(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer: a bijection of uint32 that spreads every bit."""
  x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
  x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _leaf_checksum(x: jax.Array) -> jax.Array:
  """(2,) uint32: two sums, mod 2**32, of x's 32-bit words mixed with their index.

  Lane j sums mix(word ^ seed_j(index)): a change of any one word changes
  both sums (mix is a bijection), moved words change them too, and several
  changes cancel with a chance of about 2**-64. Integer sums do not depend on
  the reduction order: the value is the same on any sharding, device or number
  of hosts, and needs no copy to the host.
  """
  w = _words(jnp.asarray(x))
  i = jnp.zeros(w.shape, jnp.uint32)  # the row-major index, without a reshape
  for axis in range(w.ndim):
    i = i * jnp.uint32(w.shape[axis]) + jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis)
  a = _mix(w ^ (i * jnp.uint32(0x9E3779B1)))
  b = _mix(((w << 16) | (w >> 16)) ^ _mix(i ^ jnp.uint32(0x5BD1E995)))
  zero = jnp.uint32(0)  # One pass over both lanes (several times faster than two sums).
  sums = jax.lax.reduce((a, b), (zero, zero), lambda p, q: (p[0] + q[0], p[1] + q[1]),
                        tuple(range(w.ndim)))
  return jnp.stack(sums)


_checksum_tree = jax.jit(lambda tree: jax.tree.map(_leaf_checksum, tree))


def array_checksums(tree: Any) -> dict:
  """{'params/conv1/kernel': 16 hex digits, ...} for every array of `tree`
  (device arrays of any sharding, or NumPy arrays)."""
  sums = jax.device_get(_checksum_tree(tree))
  flat = jax.tree_util.tree_flatten_with_path(sums)[0]
  return {_key(path): f'{int(v[0]):08x}{int(v[1]):08x}' for path, v in flat}


def verify_checksums(tree: Any, saved: Optional[dict], where: Any) -> None:
  """Raises CheckpointCorruptError naming the arrays of `tree` whose checksum
  differs from `saved` (the record saved with the checkpoint). Checkpoints
  written before checksums existed (no record) pass."""
  if not saved:
    return
  expected = saved.get('arrays', {})
  got = array_checksums(tree)
  bad = sorted(k for k in got if k in expected and expected[k] != got[k])
  if bad:
    raise CheckpointCorruptError(
        f'{where}: {len(bad)} array(s) do not match the checksums saved with them '
        f'({", ".join(bad[:3])}{", ..." if len(bad) > 3 else ""}): the stored data changed '
        'after it was written (a disk or copy error).')


def _checksum_record(state: Any) -> dict:
  return {'algorithm': CHECKSUM_ALGORITHM, 'arrays': array_checksums(state)}


def _shapes(tree: Any) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): list(np.shape(x)) for path, x in flat}


def describe(config, params: Any) -> dict:
  """The record saved beside each checkpoint, checked on restore."""
  return {'model': config.model.to_dict(), 'param_shapes': _shapes(params),
          'config': json.loads(config.to_json_best_effort())}


def _json_safe(tree):
  if isinstance(tree, dict):
    return {k: _json_safe(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_json_safe(v) for v in tree]
  return tree


# Why a write failed -> (cause, fix), by errno.
WRITE_ERRORS = {
    errno.ENOSPC: ('the disk is full',
                   'Free space there, or lower config.keep_checkpoints'),
    errno.EDQUOT: ('the disk quota is exceeded',
                   'Raise the quota (or free space) there, or lower config.keep_checkpoints'),
    errno.EROFS: ('the file system is read-only',
                  'Remount it read-write, or use a --workdir on a writable file system'),
    errno.EACCES: ('permission denied',
                   'Give this user write permission there, or use a --workdir it can write'),
    errno.EPERM: ('operation not permitted',
                  'Give this user write permission there, or use a --workdir it can write'),
}
# tensorstore (orbax's array writes) reports an OS error inside a ValueError's text.
_ERRNO_IN_TEXT = re.compile(r"os_error_code='?(\d+)|\[Errno (\d+)\]")


def write_errno(exc: Optional[BaseException]) -> Optional[int]:
  """The errno of WRITE_ERRORS behind `exc` (its cause chain, tensorstore's
  messages included), or None."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRORS:
      return exc.errno
    for match in _ERRNO_IN_TEXT.finditer(str(exc)):
      code = int(match.group(1) or match.group(2))
      if code in WRITE_ERRORS:
        return code
    exc = exc.__cause__ or exc.__context__
  return None


class ErrorLog(pylogging.Filter):
  """While a Checkpointer is open: orbax's and asyncio's ERROR records (the
  tracebacks of a failed write, logged from their threads), uncaught thread
  errors and unraisable exceptions (tensorstore's callbacks into a closed event
  loop) go to WORKDIR/errors.log instead of the console, where our one message
  (CheckpointWriteError) names the file. After a failed write this lasts past
  close(), until the next ErrorLog opens: the library's late callbacks keep
  coming while the process stops.
  `errno` is the first write errno found in them (WRITE_ERRORS)."""

  def __init__(self, workdir: epath.Path):
    super().__init__()
    local = '://' not in str(workdir)
    self.path = str(workdir / 'errors.log') if local else None
    self.errno: Optional[int] = None
    self.written = False

  def filter(self, record: pylogging.LogRecord) -> bool:
    if record.levelno < pylogging.ERROR or not (
        f'{os.sep}orbax{os.sep}' in record.pathname or record.name == 'asyncio'):
      return True
    text = pylogging.Formatter('%(asctime)s %(levelname)s %(pathname)s:%(lineno)d] '
                               '%(message)s').format(record)
    kept = self.note(text)  # Written before errno is set: a reader of errno finds it there.
    if self.errno is None and record.exc_info:
      self.errno = write_errno(record.exc_info[1])
    return not kept  # Nowhere to write it: the console keeps it.

  def note(self, text: str) -> bool:
    """Appends `text` to the log (the workdir's, else the temporary directory's);
    whether it was written."""
    for path in ([self.path] if self.path else []) + [
        os.path.join(tempfile.gettempdir(), f'alexnet_jax-errors-{os.getpid()}.log')]:
      try:
        with open(path, 'a') as f:
          f.write(text + '\n')
        self.path, self.written = path, True
        return True
      except OSError:
        continue  # e.g. the workdir is read-only: the temporary directory.
    return False

  def _note_error(self, header: str, args) -> bool:
    """An error hook's report (`args`: exc_type, exc_value, exc_traceback) in
    the log, under `header`; whether it was written."""
    text = ''.join(traceback.format_exception(args.exc_type, args.exc_value,
                                              args.exc_traceback))
    return self.note(f'{header}:\n{text}')

  def _thread_error(self, args) -> None:
    """Uncaught errors of orbax's and tensorstore's threads (e.g. asyncio's
    "Event loop is closed" after a failed write) go to the log too."""
    if not self._note_error(f'Uncaught error in thread {getattr(args.thread, "name", "?")}', args):
      self._previous_hook(args)

  def _unraisable(self, args) -> None:
    """So do unraisable ones (tensorstore's callbacks into a closed loop)."""
    if not self._note_error(f'Unraisable error ({args.err_msg or "Exception ignored"} in '
                            f'{args.object!r})', args):
      self._previous_unraisable(args)

  _lingering: Optional['ErrorLog'] = None  # the last one whose write failed

  def __enter__(self):
    if ErrorLog._lingering is not None:
      ErrorLog._lingering._detach()
    logging.get_absl_logger().addFilter(self)
    pylogging.getLogger('asyncio').addFilter(self)
    self._previous_hook, threading.excepthook = threading.excepthook, self._thread_error
    self._previous_unraisable, sys.unraisablehook = sys.unraisablehook, self._unraisable
    return self

  def __exit__(self, *exc):
    if self.written:  # A write failed: its threads may report until the next one.
      ErrorLog._lingering = self
    else:
      self._detach()

  def _detach(self) -> None:
    logging.get_absl_logger().removeFilter(self)
    pylogging.getLogger('asyncio').removeFilter(self)
    if threading.excepthook == self._thread_error:
      threading.excepthook = self._previous_hook
    if sys.unraisablehook == self._unraisable:
      sys.unraisablehook = self._previous_unraisable
    if ErrorLog._lingering is self:
      ErrorLog._lingering = None


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [''])[0][:300]


def _dir_bytes(path: epath.Path) -> int:
  total = 0
  for root, _, files in os.walk(str(path)):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total


class Checkpointer:
  """Two orbax managers under `workdir`: `checkpoints/` (latest) and `best/`."""

  def __init__(self, workdir: str, *, every_steps: int, keep: int,
               use_async: bool = True):
    def options(name, **kw):
      # Both managers can save the same step at once; on several hosts their
      # async-commit barriers (keyed by step) would collide without a prefix.
      return ocp.CheckpointManagerOptions(
          create=True, enable_async_checkpointing=use_async,
          cleanup_tmp_directories=True,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix=name), **kw)
    self.workdir = epath.Path(workdir)
    self.latest = ocp.CheckpointManager(
        self.workdir / 'checkpoints',
        options=options('latest', max_to_keep=keep, save_interval_steps=every_steps))
    self.best = ocp.CheckpointManager(
        self.workdir / 'best',
        options=options('best', max_to_keep=1, best_fn=lambda m: m['top1_error'],
                        best_mode='min'))
    self._in_flight = {}  # manager -> step of its last (possibly async) save.
    self._failed = set()  # managers whose write failed: partial writes to remove.
    self._errors = ErrorLog(self.workdir).__enter__()  # until close()

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  # ---------------------------------------------------------------- restore

  def _restore_step(self, step: int, state: Any, description: dict, check: Any):
    items = {'description': ocp.args.JsonRestore()}
    has = {k: (self.latest.directory / str(step) / k).exists() for k in ('progress', 'checksums')}
    items.update({k: ocp.args.JsonRestore() for k, present in has.items() if present})
    saved = self.latest.restore(step, args=ocp.args.Composite(**items))
    check_compatible(saved['description'], _json_safe(description), self.latest.directory)
    if check is not None:
      check(saved['description'].get('config'))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    try:
      restored = self.latest.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))['state']
    except ValueError as e:
      if not any(m in str(e) for m in ('Structure mismatch', 'structures do not match')):
        raise
      raise CheckpointMismatchError(  # Not corrupt: written by other code or optimizer.
          f'The checkpoint of step {step} in {self.latest.directory} holds a train state of '
          f'another structure ({str(e).strip().splitlines()[0][:200]}). It was written by another version of the '
          'code or another optimizer config; use a new --workdir, or that code/config.'
      ) from None
    verify_checksums(restored, saved['checksums'] if has['checksums'] else None,
                     f'step {step}')
    return restored, dict(saved['progress']) if has['progress'] else {}

  def restore(self, state: Any, description: dict, step: Optional[int] = None) -> Any:
    """Restores `state` (an abstract or concrete train state) from the latest step."""
    return self.restore_with_progress(state, description, step)[0]

  def restore_with_progress(self, state: Any, description: dict, step: Optional[int] = None,
                            check: Any = None) -> tuple[Any, dict]:
    """Restores `state` (abstract or concrete) from `step` or the newest step
    that reads; returns (state, progress record), or (None, {}) if none reads.

    `check(saved_config)` may refuse the resume (it raises). A step that fails
    to read is moved to `checkpoints-corrupt/` with one warning line.
    """
    steps = [step] if step is not None else sorted(self.latest.all_steps(), reverse=True)
    for s in steps:
      try:
        restored, progress = self._restore_step(s, state, description, check)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        if step is not None or parallel.lost_host(e):  # A lost process is no corruption.
          raise
        self._put_aside(s, e)
        continue
      logging.info('Restored step %d from %s', s, self.latest.directory)
      return restored, progress
    return None, {}

  def _move(self, step: int, kind: str) -> epath.Path:
    """Moves checkpoint `step` out of the manager's sight to checkpoints-KIND/."""
    src = self.latest.directory / str(step)
    dst = self.workdir / f'checkpoints-{kind}' / f'{step}-{time.strftime("%Y%m%dT%H%M%S")}'
    if jax.process_index() == 0:
      dst.parent.mkdir(parents=True, exist_ok=True)
      src.rename(dst)
    return dst

  def put_aside_from(self, step: int, kind: str) -> None:
    """Moves every checkpoint of `step` or later to checkpoints-KIND/ (kept, not deleted)."""
    self.latest.reload()
    for s in [s for s in self.latest.all_steps() if s >= step]:
      logging.warning('Moved checkpoint step %d to %s.', s, self._move(s, kind))
    self.latest.reload()

  def _put_aside(self, step: int, error: BaseException) -> None:
    dst = self._move(step, 'corrupt')
    logging.warning('Checkpoint step %d in %s cannot be read (%s: %s); moved it to %s and '
                    'falling back to the previous step.', step, self.latest.directory,
                    type(error).__name__, _first_line(error), dst)
    self.latest.reload()

  # ------------------------------------------------------------------- save

  def should_save(self, step: int) -> bool:
    return self.latest.should_save(step)

  @contextlib.contextmanager
  def _writing(self, manager: ocp.CheckpointManager, step: int):
    """Turns a failed write (disk full, quota, read-only, permissions) into
    one CheckpointWriteError."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      code = write_errno(e)
      if code is None:
        raise
      raise self._write_error(manager, step, code, e) from None

  def _remove_partial(self, manager) -> None:
    """Removes temporary (uncommitted) step directories. The other writes of a
    failed save may still be finishing (tensorstore's, which recreate their
    folders), so it removes until none has come back for 0.25 s (at most ~5 s)."""
    for _ in range(20):
      try:
        tmps = list(manager.directory.glob(f'*{TMP_SUFFIX}*'))
        for tmp in tmps:
          tmp.rmtree(missing_ok=True)
      except OSError:
        tmps = [None]  # still being written to: again
      if not tmps:  # none left, none came back
        return
      time.sleep(0.25)

  def _write_error(self, manager, step, code: Optional[int],
                   error: Optional[BaseException] = None) -> CheckpointWriteError:
    """The error of a failed write of `step` (errno `code`, None if unknown;
    `error` the exception that said so), after removing its partial directory."""
    self._in_flight.pop(manager, None)
    self._failed.add(manager)
    self._remove_partial(manager)
    manager.reload()
    good = [s for s in manager.all_steps() if s != step]
    need = _dir_bytes(manager.directory / str(max(good))) if good else 0
    cause, fix = WRITE_ERRORS.get(code, (
        'the write did not commit',
        f'Fix the cause given in the {"details" if self._errors.written else "log above"}'))
    if code in (errno.ENOSPC, errno.EDQUOT):
      fix = f'A checkpoint needs about {need:,} bytes (the size of the previous one). {fix}'
    error = error or sys.exc_info()[1]
    if not self._errors.written and error is not None:  # orbax's record may be on its way
      self._errors.note(f'Checkpoint write of step {step} failed (errno {code}):\n'
                        + ''.join(traceback.format_exception(error)))
    details = f' Details: {self._errors.path}.' if self._errors.written else ''
    return CheckpointWriteError(
        code or errno.EIO,
        f'Could not write the checkpoint of step {step} to {manager.directory}: {cause}'
        f'{f" ([Errno {code}] {os.strerror(code)})" if code else ""}. The partial write was '
        f'removed; {"step " + str(max(good)) + " is the latest intact checkpoint" if good else "there is no earlier checkpoint"}. '
        f'{fix}, then rerun the same command to resume.{details}')

  def _committed(self, manager, step: int) -> bool:
    if any(manager.directory.glob(f'{step}{TMP_SUFFIX}*')):
      return False  # A failed write leaves its temporary directory.
    if manager is self.best:
      return True   # best/ drops steps that are not the best: absence is no failure.
    manager.reload()
    return step in manager.all_steps()

  def check_writes(self) -> None:
    """Raises CheckpointWriteError as soon as a finished async save did not
    commit (orbax only logs such a failure in its finalize thread)."""
    for manager, step in list(self._in_flight.items()):
      if manager.is_saving_in_progress():
        continue
      del self._in_flight[manager]
      if not self._committed(manager, step):
        code, error = None, None
        try:  # Its threads raise or log why (self._errors reads the log) once joined.
          manager.wait_until_finished()
        except Exception as e:  # pylint: disable=broad-except
          code, error = write_errno(e), e
        raise self._write_error(manager, step, code or self._errors.errno, error)

  def _save(self, manager, step, state, description, progress, **kw) -> bool:
    if step in manager.all_steps():   # Saved before a kill, or just now: same step, same state.
      return False
    items = {'state': ocp.args.StandardSave(state),
             'description': ocp.args.JsonSave(_json_safe(description)),
             'checksums': ocp.args.JsonSave(_checksum_record(state))}
    if progress is not None:
      items['progress'] = ocp.args.JsonSave(_json_safe(progress))
    self.check_writes()
    with self._writing(manager, step):
      saved = manager.save(step, args=ocp.args.Composite(**items), **kw)
    if saved:
      self._in_flight[manager] = step
    return saved

  def save(self, step: int, state: Any, description: dict, progress: Optional[dict] = None,
           force: bool = False) -> bool:
    """Saves `step` if it is due (or `force`) and not already saved."""
    return self._save(self.latest, step, state, description, progress, force=force)

  def save_best(self, step: int, state: Any, description: dict, metrics: dict) -> bool:
    """Offers `step` to best/ (kept if metrics['top1_error'], the top-1 error
    that config.eval.select_on names, is the lowest). A step already there (evaluated before a kill) is not written again."""
    return self._save(self.best, step, state, description, None,
                      metrics={k: float(v) for k, v in metrics.items()}, force=True)

  def wait(self) -> None:
    for m in (self.latest, self.best):
      with self._writing(m, self._in_flight.get(m, -1)):
        m.wait_until_finished()
    self.check_writes()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      for m in (self.latest, self.best):
        m.close()
        if m in self._failed:  # Writes still in flight when the failure showed.
          self._remove_partial(m)
      self._errors.__exit__()


def resume_point(workdir: str) -> str:
  """Where a rerun in `workdir` resumes, as a sentence for stop messages."""
  try:
    latest = step_dir(workdir)
  except FileNotFoundError:
    return f'There is no checkpoint in {workdir} yet: the rerun starts at step 0.'
  return f'The last checkpoint is step {latest.name} in {latest.parent}.'


def check_compatible(saved: dict, current: dict, where: Any) -> None:
  """Raises CheckpointMismatchError naming what differs."""
  problems = []
  if saved.get('param_shapes') != current['param_shapes']:
    a, b = saved.get('param_shapes', {}), current['param_shapes']
    for k in sorted(set(a) | set(b)):
      if a.get(k) != b.get(k):
        problems.append(f'  {k}: checkpoint {a.get(k)} vs config {b.get(k)}')
  if problems:
    diff = [f'  model.{k}: checkpoint {v!r} vs config {current["model"].get(k)!r}'
            for k, v in sorted(saved.get('model', {}).items())
            if current['model'].get(k) != v]
    raise CheckpointMismatchError(
        f'The checkpoint in {where} was written by a different model and cannot be '
        'restored into this config.\nConfig differences:\n' + ('\n'.join(diff) or '  (none)') +
        '\nParameter shapes that differ:\n' + '\n'.join(problems[:10]) +
        '\nUse a new --workdir, or rerun with the config that wrote the checkpoint.')


# --------------------------------------------------------------------------
# Parameters alone (predict, figures, ensembles, config.init_from)
# --------------------------------------------------------------------------


def step_dirs(path: str, which: str = 'latest') -> list:
  """The checkpoint step directories that `path` names, newest first: a
  workdir, a manager directory (`checkpoints/`, `best/`) or one step directory.

  which: 'latest' (the workdir's `checkpoints/`) or 'best' (its `best/`).
  Entries named like a step that are not directories (a stray file `999`) are
  skipped, as the training loop's orbax manager skips them.
  """
  if which not in ('latest', 'best'):
    raise ValueError(f"which must be 'latest' or 'best', got {which!r}.")
  path = epath.Path(path)
  if (path / 'state').is_dir():
    return [path]
  manager = path / ('best' if which == 'best' else 'checkpoints')
  if manager.is_dir():
    path = manager
  steps = sorted((int(p.name) for p in path.iterdir() if p.name.isdigit() and p.is_dir()),
                 reverse=True) if path.is_dir() else []
  if not steps:
    raise FileNotFoundError(
        f'No checkpoint in {path}. Give a workdir that holds checkpoints/ (or best/), '
        'such a directory, or one of its step directories.')
  return [path / str(s) for s in steps]


def step_dir(path: str, which: str = 'latest') -> epath.Path:
  """The newest of `step_dirs(path, which)`."""
  return step_dirs(path, which)[0]


def _load_step(directory: epath.Path) -> tuple[Any, dict]:
  """(params as NumPy arrays, description) of one step directory, verified
  against its checksums."""
  if not (directory / 'state').is_dir():
    raise FileNotFoundError(f'{directory} holds no state/ (not a complete checkpoint)')
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(directory / 'state')
  if metadata is None or metadata.item_metadata is None:
    raise FileNotFoundError(f'{directory / "state"} has no readable metadata')
  tree = metadata.item_metadata.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  state = checkpointer.restore(directory / 'state',
                               args=ocp.args.PyTreeRestore(restore_args=restore_args))
  json_item = ocp.Checkpointer(ocp.JsonCheckpointHandler())
  description = json_item.restore(directory / 'description')
  saved = json_item.restore(directory / 'checksums') if (directory / 'checksums').exists() else None
  verify_checksums(state, saved, str(directory))
  return state['params'], description


def load_params(path: str, which: str = 'latest') -> tuple[Any, dict, int]:
  """(params as NumPy arrays, the saved description, step) of a checkpoint.

  Reads only what was saved (no model or optimizer needed), on any number of
  devices; the arrays are checked against the checksums saved with them. `path`
  and `which` as in `step_dirs`: of a workdir or manager directory, the newest
  step that reads and verifies (a warning names each step passed over; nothing
  is moved: that is the training run's to do); a step directory given itself
  must read.
  """
  directories = step_dirs(path, which)
  for i, directory in enumerate(directories):
    try:
      params, description = _load_step(directory)
    except Exception as e:  # pylint: disable=broad-except
      if i + 1 == len(directories):
        if len(directories) == 1 and isinstance(e, CheckpointCorruptError):
          raise
        raise CheckpointCorruptError(
            f'No checkpoint in {directory.parent} can be read; the last one tried, '
            f'{directory}: {type(e).__name__}: {_first_line(e)}') from e
      logging.warning('Checkpoint %s cannot be read (%s: %s); using the previous step.',
                      directory, type(e).__name__, _first_line(e))
      continue
    step = int(directory.name) if directory.name.isdigit() else -1
    return params, description, step
  raise AssertionError('unreachable')


def merge_params(fresh: Any, loaded: Any, reinit: tuple = (), source: str = '') -> Any:
  """`fresh` (a new model's params) with every layer taken from `loaded` except
  the layers named in `reinit`, which keep their fresh initialization.

  Raises CheckpointMismatchError naming each layer whose shapes differ (or that
  `loaded` lacks) and the fix, e.g. init_reinit=('fc8',) for a new class count.
  """
  unknown = sorted(set(reinit) - set(fresh))
  if unknown:
    raise CheckpointMismatchError(f'config.init_reinit names {unknown}, which are not '
                                  f'layers of this model; its layers are {sorted(fresh)}.')
  saved = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(loaded)[0]}
  problems = []

  def take(path, x):
    if path[0].key in reinit:
      return x
    key = jax.tree_util.keystr(path)
    if key not in saved:
      problems.append((path[0].key, f'{key}: not in the checkpoint'))
    elif np.shape(saved[key]) != np.shape(x):
      problems.append((path[0].key, f'{key}: checkpoint {list(np.shape(saved[key]))} '
                                    f'vs model {list(np.shape(x))}'))
    else:
      return np.asarray(saved[key], dtype=x.dtype)
    return x

  params = jax.tree_util.tree_map_with_path(take, fresh)
  if problems:
    layers = tuple(sorted({layer for layer, _ in problems} | set(reinit)))
    raise CheckpointMismatchError(
        f'config.init_from={source} does not fit this model:\n  ' +
        '\n  '.join(p for _, p in problems) +
        f'\nRe-initialize those layers (--config.init_reinit="{layers}"), or set '
        'config.model to the one that wrote the checkpoint.')
  extra = sorted(set(loaded) - set(fresh))
  if extra:
    logging.warning('config.init_from=%s: layers %s of the checkpoint are not in this '
                    'model and are not used.', source, extra)
  return params
