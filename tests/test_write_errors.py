"""A checkpoint write that fails (issue 18 items 6, 7): the message names the
real cause (full disk, quota, read-only file system, permissions) and its fix;
orbax's tracebacks go to WORKDIR/errors.log, not to the console."""

import errno
import os
import subprocess
import sys
import time

import jax.numpy as jnp
import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import config_checks
from tests.test_faults import FLAGS, ROOT

STATE = {'w': jnp.arange(12.0).reshape(3, 4), 'b': jnp.ones(4)}


def fail_progress_write(monkeypatch, code: int, at: int, tensorstore: bool = False):
  """The `at`-th progress record's write fails with errno `code` (as an
  OSError, or as tensorstore reports it: a ValueError naming the code)."""
  original = json_checkpoint_handler.JsonCheckpointHandler._save_fn
  calls = []

  async def save_fn(self, x, directory):
    if isinstance(x, dict) and 'evaluated_step' in x:
      calls.append(directory)
      if len(calls) == at:
        if tensorstore:
          raise ValueError(f'FAILED_PRECONDITION: Error writing "{directory}": '
                           f"{os.strerror(code)} [os_error_code='{code}']")
        raise OSError(code, os.strerror(code), str(directory))
    return await original(self, x, directory)

  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, '_save_fn', save_fn)


@pytest.mark.parametrize('code, cause, fix', [
    (errno.EROFS, 'the file system is read-only', 'Remount it read-write'),
    (errno.EACCES, 'permission denied', 'write permission'),
    (errno.ENOSPC, 'the disk is full', 'Free space there'),
    (errno.EDQUOT, 'the disk quota is exceeded', 'Raise the quota'),
])
@pytest.mark.parametrize('use_async', [False, True])
def test_the_message_names_the_real_cause_and_its_fix(tmp_path, monkeypatch, code, cause, fix,
                                                      use_async):
  fail_progress_write(monkeypatch, code, at=2)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1, keep=3, use_async=use_async)
  ckpt.save(1, STATE, {'m': 1}, {'evaluated_step': 1}, force=True)
  with pytest.raises(ckpt_lib.CheckpointWriteError) as e:
    ckpt.save(2, STATE, {'m': 1}, {'evaluated_step': 2}, force=True)
    while ckpt.latest.is_saving_in_progress():  # as the training loop sees it:
      time.sleep(0.01)
    ckpt.check_writes()                         # a finished save that did not commit
  ckpt.close()
  message = str(e.value)
  assert e.value.errno == code
  assert f'step 2 to {tmp_path / "checkpoints"}: {cause} ([Errno {code}] ' in message, message
  assert fix in message and 'step 1 is the latest intact checkpoint' in message, message
  assert ('about' in message and 'bytes' in message) == (code in (errno.ENOSPC, errno.EDQUOT))
  for other, (other_cause, _) in ckpt_lib.WRITE_ERRORS.items():
    assert other == code or other_cause not in message
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['1']
  if use_async:  # orbax logged the failure from its thread: kept in errors.log.
    assert f'Details: {tmp_path / "errors.log"}.' in message
    assert 'Traceback' in (tmp_path / 'errors.log').read_text()


def test_tensorstore_errors_are_read_for_their_errno(tmp_path, monkeypatch):
  fail_progress_write(monkeypatch, errno.EROFS, at=1, tensorstore=True)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1, keep=3, use_async=False)
  with pytest.raises(ckpt_lib.CheckpointWriteError, match='read-only'):
    ckpt.save(1, STATE, {'m': 1}, {'evaluated_step': 1}, force=True)
  ckpt.close()
  assert ckpt_lib.write_errno(ValueError("x [os_error_code='28']")) == errno.ENOSPC
  assert ckpt_lib.write_errno(RuntimeError('no errno here')) is None


def test_writable_problem():
  """The up-front workdir check (config_checks.workdir_problems, the one probe)."""
  assert config_checks.workdir_problems(ROOT) == []
  assert config_checks.workdir_problems(os.path.join(ROOT, 'not', 'yet')) == []
  if os.path.isdir('/proc/1'):  # procfs refuses new files: EACCES/ENOENT-like errors
    assert config_checks.workdir_problems('/proc/1') != []


@pytest.mark.slow
def test_a_read_only_checkpoint_write_shows_one_message_and_no_traceback(tmp_path):
  """The whole command: its stderr is our one ERROR line (orbax logged ~150
  lines of tracebacks there before)."""
  inject = (
      'import errno, os, runpy, sys\n'
      'from orbax.checkpoint._src.handlers import json_checkpoint_handler as h\n'
      'original, calls = h.JsonCheckpointHandler._save_fn, []\n'
      'async def save_fn(self, x, directory):\n'
      '  if isinstance(x, dict) and "evaluated_step" in x:\n'
      '    calls.append(directory)\n'
      '    if len(calls) == 2:\n'
      '      raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(directory))\n'
      '  return await original(self, x, directory)\n'
      'h.JsonCheckpointHandler._save_fn = save_fn\n'
      'sys.argv = ["alexnet_jax.main"] + sys.argv[1:]\n'
      'runpy.run_module("alexnet_jax.main", run_name="__main__")\n')
  workdir = tmp_path / 'w'
  proc = subprocess.run(
      [sys.executable, '-c', inject, f'--workdir={workdir}', *FLAGS,
       '--config.num_train_steps=6', '--config.async_checkpoints=True',
       '--config.checkpoint_every_steps=4'],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith('ERROR')]
  assert len(errors) == 1 and 'the file system is read-only' in errors[0], proc.stderr
  assert f'Details: {workdir / "errors.log"}' in errors[0]
  # Nor the library's late reports (asyncio's "Task exception was never
  # retrieved", tensorstore's callbacks into a closed loop): errors.log has them.
  for text in ('Traceback', 'Task exception', 'Event loop is closed'):
    assert text not in proc.stderr + proc.stdout, proc.stderr
  assert 'Read-only file system' in (workdir / 'errors.log').read_text()
