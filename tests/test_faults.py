"""Faults injected into the training loop (issue 11): kill -9 at chosen points,
SIGTERM/SIGINT (in every phase), a stuck step (the watchdog),
non-finite losses, changed configs, corrupt checkpoints, a full disk,
concurrent starts, failing evaluations. Lost and stopped processes of a
multi-process run: tests/test_multiprocess.py. Every run here must end equal to
one uninterrupted reference run (fixture `ref`) or fail with a message.

Subprocess runs choose their fault point with tests/fault_main.py --fault=...; in-process
runs pass its hook to train.train_and_evaluate(..., hooks=[...]).
"""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import config_checks
from alexnet_jax import resume_policy
from alexnet_jax import train
from alexnet_jax import workdir_lock
from alexnet_jax import optimizer
from alexnet_jax import preemption
from alexnet_jax import steps
from tests import fault_main
from tests.conftest import tiny_config
from tests.test_train import ROOT, TINY_FLAGS

FLAGS = TINY_FLAGS + ['--config.eval.ten_crop=False']

STEPS = 12   # evaluations at 11 and 12; tiny_config checkpoints every 4 steps.


def cfg(**overrides):
  """tiny_config with one eval mode: the runs here share two compiled steps."""
  return tiny_config(**{'eval.ten_crop': False, **overrides})


@pytest.fixture(scope='module', autouse=True)
def compilation_cache():
  """Every run here compiles the same steps: they compile once, into the
  session's persistent cache (tests/conftest.py), which the subprocesses share."""
  return jax.config.jax_compilation_cache_dir


@pytest.fixture
def ref(reference_run):
  """One uninterrupted run of cfg(num_train_steps=STEPS): (final state,
  final_metrics.json); tests/conftest.py's reference_run, which has its workdir."""
  return reference_run[1:]


def assert_state_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)


def restored(workdir, ref_state, step=STEPS):
  ckpt = ckpt_lib.Checkpointer(str(workdir), every_steps=1, keep=1, use_async=False)
  state = ckpt.restore(ref_state, ckpt_lib.describe(cfg(), ref_state.params),
                          step=step)
  ckpt.close()
  return state


def steps_of(workdir, sub='checkpoints'):
  if not (workdir / sub).exists():
    return []
  return sorted(int(p.name) for p in (workdir / sub).iterdir() if p.name.isdigit())


def main_env():
  return dict(os.environ, PYTHONPATH=ROOT,
              JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)


def main(workdir, *flags, fault=None):
  """Runs main to its end (with `fault`: tests/fault_main.py); returns (exit
  status, output)."""
  command = (['tests/fault_main.py', f'--fault={fault}'] if fault else ['-m', 'alexnet_jax.main'])
  proc = subprocess.run(
      [sys.executable, *command, f'--workdir={workdir}', *FLAGS,
       f'--config.num_train_steps={STEPS}', *flags],
      cwd=ROOT, env=main_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      timeout=300)
  return proc.returncode, proc.stdout


# --------------------------------------------------------------------------
# Items 1, 2, 9, 10: kills and signals, then the same command
# --------------------------------------------------------------------------


@pytest.mark.slow
def test_kill9_mid_async_save_and_after_an_evaluation_then_rerun_equals_reference(
    tmp_path, ref):
  workdir = tmp_path / 'w'
  # kill -9 while the async save of step 5 is in flight.
  rc, out = main(workdir, '--config.async_checkpoints=True', fault='saved@5')
  assert rc == -signal.SIGKILL, out
  # kill -9 after evaluation 11 wrote best/11 (old code: a best/ step newer than
  # the latest checkpoint, then StepAlreadyExistsError on every rerun).
  rc, out = main(workdir, fault='evaluated@11')
  assert rc == -signal.SIGKILL, out
  assert 11 in steps_of(workdir, 'best')
  rc, out = main(workdir)
  assert rc == 0, out
  assert 'Traceback' not in out, out
  assert_state_equal(ref[0], restored(workdir, ref[0]))
  final = json.loads((workdir / 'final_metrics.json').read_text())
  for k in ('eval_top1_error', 'eval_loss'):
    np.testing.assert_allclose(final[k], ref[1][k], rtol=1e-5)


@pytest.mark.slow
def test_sigterm_on_a_save_step_and_sigint_stop_with_status_75_then_rerun_equals_reference(
    tmp_path, ref):
  workdir = tmp_path / 'w'
  # Step 5 is a checkpoint step (TINY_FLAGS: every 5): old code saved it twice
  # (StepAlreadyExistsError, exit 1) and a preempted run exited 0.
  rc, out = main(workdir, fault='trained@5:TERM')
  assert rc == preemption.PREEMPTED_EXIT_CODE, out
  assert 'Preempted at step 5 of 12' in out and 'Traceback' not in out, out
  assert steps_of(workdir)[-1] == 5
  # Ctrl-C from outside, mid-run, saves and stops too (old code: KeyboardInterrupt,
  # the steps since the last checkpoint lost).
  proc = subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.main', f'--workdir={workdir}', *FLAGS,
       f'--config.num_train_steps={STEPS}'], cwd=ROOT, env=main_env(),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if ' step 8/' in line:
      proc.send_signal(signal.SIGINT)
      break
  out = ''.join(lines) + proc.communicate(timeout=300)[0]
  assert proc.returncode == preemption.PREEMPTED_EXIT_CODE, out
  assert 'SIGINT received' in out and 'Traceback' not in out, out
  stopped = steps_of(workdir)[-1]
  assert 8 <= stopped < STEPS, out
  rc, out = main(workdir)
  assert rc == 0 and f'resuming at step {stopped}' in out, out
  assert_state_equal(ref[0], restored(workdir, ref[0]))


def test_best_step_newer_than_the_latest_checkpoint_resumes(tmp_path, ref, reference_run):
  """Item 1's state as old code left it: best/11 but no checkpoint >= 11."""
  config = cfg(num_train_steps=STEPS)
  tmp_path = tmp_path / 'w'
  shutil.copytree(reference_run[0], tmp_path)   # a finished run of `config`
  for s in steps_of(tmp_path):
    if s >= 11:
      (tmp_path / 'checkpoints' / str(s)).rename(tmp_path / f'gone-{s}')
  assert 11 in steps_of(tmp_path, 'best') or 12 in steps_of(tmp_path, 'best')
  state = train.train_and_evaluate(config, str(tmp_path))
  assert_state_equal(ref[0], state)


OUTSIDE_THE_LOOP = ('received outside the training loop (nothing unsaved): stopping with '
                    'exit status 75. Run the same command to resume.')


@pytest.mark.parametrize('sig', ['TERM', 'INT'])
def test_a_signal_outside_the_loop_exits_75_with_one_line(sig):
  code = ('import os, signal, time\n'
          'from alexnet_jax import preemption\n'
          'preemption.exit_on_signals()\n'
          f'os.kill(os.getpid(), signal.SIG{sig})\n'
          'time.sleep(30)\n')
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=main_env(),
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == preemption.PREEMPTED_EXIT_CODE, proc.stderr
  assert proc.stderr == f'SIG{sig} {OUTSIDE_THE_LOOP}\n' and not proc.stdout, proc.stderr


@pytest.mark.slow
def test_a_signal_in_any_phase_exits_75_and_saves_what_is_unsaved(tmp_path, ref):
  """Signals in every phase. Old code: -2 and a traceback (SIGINT in the TensorFlow
  import), -15 (SIGTERM at start-up, and while a resumed run re-evaluated),
  'Exception ignored ... KeyboardInterrupt' (SIGINT after `Done:`)."""
  workdir = tmp_path / 'w'
  # Start-up: inside the TensorFlow import (0.2 s after main installed its signal
  # handling; the import takes seconds), then right after the (fresh) restore.
  rc, out = main(workdir, fault='import:INT+0.2')
  assert rc == preemption.PREEMPTED_EXIT_CODE and out == f'SIGINT {OUTSIDE_THE_LOOP}\n', out
  rc, out = main(workdir, fault='restored:TERM')
  assert rc == preemption.PREEMPTED_EXIT_CODE and f'SIGTERM {OUTSIDE_THE_LOOP}' in out, out
  assert not (workdir / 'lock.json').exists() and steps_of(workdir) == []
  # An evaluation in the loop, then the re-evaluation of the resumed run: the
  # step is saved before it evaluates; the run stops between evaluation batches.
  for sig, resumed in (('TERM', False), ('INT', True)):
    rc, out = main(workdir, fault=f'evaluating@11:{sig}')
    assert rc == preemption.PREEMPTED_EXIT_CODE, out
    assert ('resuming at step 11' in out) == resumed, out
    assert f'SIG{sig} received: saving' in out and 'Preempted at step 11 of 12' in out, out
    assert 'Traceback' not in out and steps_of(workdir)[-1] == 11, out
  # After the `Done:` line.
  rc, out = main(workdir, fault='done:INT')
  assert rc == preemption.PREEMPTED_EXIT_CODE, out
  assert 'Done:' in out and out.endswith(f'SIGINT {OUTSIDE_THE_LOOP}\n'), out
  assert 'Traceback' not in out and 'Exception ignored' not in out, out
  assert_state_equal(ref[0], restored(workdir, ref[0]))
  final = json.loads((workdir / 'final_metrics.json').read_text())
  np.testing.assert_allclose(final['eval_top1_error'], ref[1]['eval_top1_error'], rtol=1e-6)


def test_watchdog_dumps_every_stack_and_exits_75_after_no_progress(tmp_path):
  dump = tmp_path / 'errors.log'
  code = ('import time\n'
          'from alexnet_jax import preemption\n'
          'with preemption.stop_context(lambda: "The last checkpoint is step 7.",\n'
          '                             lambda: print("released", flush=True)):\n'
          f'  with preemption.Watchdog(0.02, {str(dump)!r}) as watchdog:\n'
          '    for _ in range(20):  # 2 s of progress: no stop\n'
          '      time.sleep(0.1)\n'
          '      watchdog.progress()\n'
          '    print("stuck", flush=True)\n'
          '    time.sleep(60)  # a hung read\n')
  t0 = time.monotonic()
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=main_env(),
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == preemption.PREEMPTED_EXIT_CODE, proc.stderr
  assert 3.2 < time.monotonic() - t0 < 30
  assert proc.stdout == 'stuck\nreleased\n'
  [line] = proc.stderr.splitlines()
  assert line.startswith('ERROR: No training step or evaluation batch completed for') and (
      'config.watchdog_minutes=0.02' in line and f'stack: {dump}' in line and
      'The last checkpoint is step 7.' in line), line
  stacks = dump.read_text()
  assert 'watchdog: no progress' in stacks and 'File "<string>", line 10' in stacks, stacks


def test_watchdog_minutes_is_checked_and_applied_on_resume():
  assert cfg().watchdog_minutes == 10.0   # every shipped config: configs/ilsvrc.py
  assert config_checks.validate(cfg(watchdog_minutes=-1.0)) == [
      'config.watchdog_minutes=-1.0: must be a number in [0, inf).']
  assert resume_policy.rule('watchdog_minutes') == 'apply'


@pytest.mark.slow
def test_a_hung_step_trips_the_watchdog(tmp_path, ref):
  """A stuck process, alone: a step that never returns (a hung read).
  (ref: its run fills the compilation cache, so the first steps here do not
  spend seconds compiling within the watchdog's 15 s.)"""
  del ref
  rc, out = main(tmp_path, '--config.watchdog_minutes=0.25', fault='trained@7:HANG')
  assert rc == preemption.PREEMPTED_EXIT_CODE, out
  [line] = [x for x in out.splitlines() if x.startswith('ERROR:')]
  assert 'config.watchdog_minutes=0.25' in line and str(tmp_path / 'errors.log') in line, line
  assert f'The last checkpoint is step 5 in {tmp_path / "checkpoints"}' in line, line
  assert 'Traceback' not in out, out
  assert 'in fault_point' in (tmp_path / 'errors.log').read_text()
  assert not (tmp_path / 'lock.json').exists()


def test_second_ctrl_c_under_main_exits_75_at_once():
  code = ('import os, signal, time\n'
          'from alexnet_jax import preemption\n'
          'preemption.exit_on_signals()\n'
          'with preemption.PreemptionFlag():\n'
          '  signal.raise_signal(signal.SIGINT)\n'
          '  signal.raise_signal(signal.SIGINT)\n'
          '  time.sleep(30)\n')
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=main_env(),
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == preemption.PREEMPTED_EXIT_CODE, proc.stderr
  assert proc.stderr.endswith('SIGINT again: stopping at once without saving. Run the same '
                              'command to resume.\n'), proc.stderr
  assert 'Traceback' not in proc.stderr


def test_second_ctrl_c_aborts_at_once():
  with preemption.PreemptionFlag() as flag:
    signal.raise_signal(signal.SIGINT)
    assert flag.set
    with pytest.raises(KeyboardInterrupt):
      signal.raise_signal(signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --------------------------------------------------------------------------
# Item 3: no checkpoint holds a non-finite state
# --------------------------------------------------------------------------


@pytest.mark.slow
def test_non_finite_state_is_never_checkpointed_and_a_lower_lr_rerun_finishes(tmp_path):
  config = cfg(**{'optimizer.learning_rate': 1e6, 'num_train_steps': 4,
                  'log_every_steps': 4, 'checkpoint_every_steps': 1})
  with pytest.raises(train.NonFiniteLossError, match=r'loss nan at step 2'):
    train.train_and_evaluate(config, str(tmp_path))
  # Old code kept steps 1-3, 2-3 holding NaNs. Here step 1 (finite, but its loss at
  # step 2 was not) is put aside, not deleted; nothing later was saved.
  assert steps_of(tmp_path) == []
  aside = list((tmp_path / 'checkpoints-diverged').iterdir())
  assert [p.name.split('-')[0] for p in aside] == ['1']
  tree = ocp.StandardCheckpointer().restore(aside[0] / 'state')
  # (The plateau record's `best` starts at +inf by design.)
  assert all(np.isfinite(np.asarray(x)).all()
             for x in jax.tree.leaves((tree['params'], tree['opt_state'])))
  # The error's advice: a lower learning rate, same workdir.
  config.optimizer.learning_rate = 0.01
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 4
  assert np.isfinite(json.loads((tmp_path / 'final_metrics.json').read_text())['train_loss'])


# --------------------------------------------------------------------------
# Item 4: a resume with changed settings applies or refuses each change
# --------------------------------------------------------------------------


def test_resume_applies_optimizer_changes_and_refuses_trajectory_changes(tmp_path):
  train.train_and_evaluate(cfg(num_train_steps=4), str(tmp_path))
  changed = cfg(**{'num_train_steps': 5, 'optimizer.momentum': 0.5,
                           'optimizer.weight_decay': 0.0})
  state = train.train_and_evaluate(changed, str(tmp_path))
  hp = state.opt_state.hyperparams
  assert float(hp['momentum']) == 0.5 and float(hp['weight_decay']) == 0.0
  recorded = json.loads((tmp_path / 'config.json').read_text())
  assert recorded['optimizer']['momentum'] == 0.5
  for key, value in [('batch_size', 16), ('seed', 1), ('optimizer.rule', 'trace_then_scale'),
                     ('schedule.name', 'cosine')]:
    with pytest.raises(resume_policy.ResumeRefusedError, match=key.replace('.', r'\.')):
      train.train_and_evaluate(cfg(**{'num_train_steps': 6, key: value,
                                              'optimizer.momentum': 0.5,
                                              'optimizer.weight_decay': 0.0}),
                               str(tmp_path))
    # A refused resume leaves the run's record alone.
    assert json.loads((tmp_path / 'config.json').read_text()) == recorded


def test_resume_policy_table():
  assert resume_policy.rule('optimizer.momentum') == 'apply'
  assert resume_policy.rule('schedule.patience') == 'apply'
  assert resume_policy.rule('schedule.name') == 'refuse'
  assert resume_policy.rule('model.conv_features') == 'refuse'
  assert resume_policy.rule('dataset.data_dir') == 'apply'
  assert resume_policy.rule('dataset.shuffle_buffer') == 'refuse'
  assert resume_policy.rule('some_new_key') == 'refuse'
  assert resume_policy.changes({'a': [1, 2], 'b': {'c': 1}}, {'a': (1, 2), 'b': {'c': 2}}) == [
      ('b.c', 1, 2)]


# --------------------------------------------------------------------------
# Item 5: a corrupt latest checkpoint falls back to the newest step that reads
# --------------------------------------------------------------------------


def test_corrupt_checkpoints_are_put_aside_and_the_run_falls_back(tmp_path, ref, reference_run,
                                                                  caplog):
  config = cfg(num_train_steps=STEPS)
  tmp_path = tmp_path / 'w'
  shutil.copytree(reference_run[0], tmp_path)   # a finished run of `config`
  assert steps_of(tmp_path) == [8, 11, 12]
  # A state of another structure (other code or optimizer) is a mismatch, not corruption.
  ckpt = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1, keep=3, use_async=False)
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match='another structure'):
    ckpt.restore_with_progress({'other': ref[0].params},
                               ckpt_lib.describe(config, ref[0].params))
  ckpt.close()
  assert steps_of(tmp_path) == [8, 11, 12]
  # Step 12: every data file truncated to half. Step 11: its metadata file gone.
  for root, _, files in os.walk(tmp_path / 'checkpoints' / '12' / 'state'):
    for f in files:
      path = os.path.join(root, f)
      os.truncate(path, os.path.getsize(path) // 2)
  (tmp_path / 'checkpoints' / '11' / 'state' / '_METADATA').unlink()
  caplog.set_level('WARNING')
  state = train.train_and_evaluate(config, str(tmp_path))
  assert_state_equal(ref[0], state)
  aside = sorted(p.name.split('-')[0] for p in (tmp_path / 'checkpoints-corrupt').iterdir())
  assert aside == ['11', '12']
  warned = [r.getMessage() for r in caplog.records if 'cannot be read' in r.getMessage()]
  assert len(warned) == 2 and 'step 12' in warned[0] and 'step 11' in warned[1], warned
  assert not [r for r in caplog.records if r.levelname == 'ERROR']


# --------------------------------------------------------------------------
# Item 6: a full disk
# --------------------------------------------------------------------------


@pytest.mark.parametrize('use_async', [True, False])
def test_disk_full_is_reported_at_once_keeping_the_last_good_checkpoint(
    tmp_path, monkeypatch, use_async):
  original = json_checkpoint_handler.JsonCheckpointHandler._save_fn
  calls = []

  async def save_fn(self, x, directory):
    if isinstance(x, dict) and 'evaluated_step' in x:  # the progress record
      calls.append(directory)
      if len(calls) == 3:   # saves at steps 1 (orbax saves the first step), 4, 8
        raise OSError(errno.ENOSPC, 'No space left on device', str(directory))
    return await original(self, x, directory)

  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, '_save_fn', save_fn)
  config = cfg(num_train_steps=10, async_checkpoints=use_async,
                       **{'eval.every_epochs': 1.0})
  with pytest.raises(ckpt_lib.CheckpointWriteError) as e:
    train.train_and_evaluate(config, str(tmp_path))
  message = str(e.value)
  assert 'step 8' in message and str(tmp_path / 'checkpoints') in message, message
  assert 'bytes' in message and 'step 4 is the latest intact checkpoint' in message, message
  assert steps_of(tmp_path) == [1, 4]
  assert not [p for p in (tmp_path / 'checkpoints').iterdir() if 'tmp' in p.name]
  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, '_save_fn', original)
  assert int(train.train_and_evaluate(config, str(tmp_path)).step) == 10


# --------------------------------------------------------------------------
# Item 7: one process per workdir
# --------------------------------------------------------------------------


def test_a_live_lock_refuses_and_a_stale_lock_is_taken_over(tmp_path, caplog):
  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
  try:
    record = {'host': socket.gethostname(), 'pid': holder.pid, 'start_time': 'then'}
    (tmp_path / 'lock.json').write_text(json.dumps(record))
    with pytest.raises(workdir_lock.WorkdirLockedError,
                       match=f'process {holder.pid} on host {socket.gethostname()}'):
      train.train_and_evaluate(cfg(num_train_steps=2), str(tmp_path))
    assert not (tmp_path / 'config.json').exists()
  finally:
    holder.kill()
    holder.wait()
  caplog.set_level('WARNING')
  train.train_and_evaluate(cfg(num_train_steps=2), str(tmp_path))
  assert any('stale lock' in r.getMessage() for r in caplog.records)
  assert not (tmp_path / 'lock.json').exists()
  # Another host's lock holds while it is refreshed, and is stale once it is not.
  (tmp_path / 'lock.json').write_text(json.dumps({'host': 'elsewhere', 'pid': 1}))
  with pytest.raises(workdir_lock.WorkdirLockedError, match='process 1 on host elsewhere'):
    with workdir_lock.WorkdirLock(tmp_path):
      pass
  old = time.time() - 2 * workdir_lock.STALE_AFTER_S
  os.utime(tmp_path / 'lock.json', (old, old))
  with workdir_lock.WorkdirLock(tmp_path) as lock:
    assert json.loads((tmp_path / 'lock.json').read_text()) == lock.record


# --------------------------------------------------------------------------
# Items 8 and 11: a failed evaluation; totals across segments
# --------------------------------------------------------------------------


def _failing_evaluate(monkeypatch):
  def evaluate(*args, **kwargs):
    raise ZeroDivisionError('float division by zero')
  monkeypatch.setattr(train, 'evaluate', evaluate)


def test_failed_evaluation_saves_first_and_the_rerun_resumes_with_it(tmp_path, ref, monkeypatch):
  config = cfg(num_train_steps=STEPS)
  _failing_evaluate(monkeypatch)
  with pytest.raises(train.EvaluationError, match='Evaluation at step 11 failed'):
    train.train_and_evaluate(config, str(tmp_path))
  assert steps_of(tmp_path)[-1] == 11   # old code: 8, steps 9-11 lost.
  monkeypatch.undo()
  state = train.train_and_evaluate(config, str(tmp_path))
  assert_state_equal(ref[0], state)
  final = json.loads((tmp_path / 'final_metrics.json').read_text())
  np.testing.assert_allclose(final['eval_top1_error'], ref[1]['eval_top1_error'], rtol=1e-6)


class _StepClock:
  """A clock that moves one second per trained step and stands still otherwise,
  so the wall time a run records is exactly the steps its segments trained.
  (Real time made this test depend on load: the time a crashed segment spends
  after its last save is rightly not counted, and under load it outgrew the
  first segment.)"""

  def __init__(self):
    self.now = 1000.0

  def time(self):
    return self.now

  def __call__(self, event, step=None):   # a supervisor hook
    if event == 'trained':
      self.now += 1.0


def test_final_metrics_total_the_segments(tmp_path, ref, monkeypatch):
  config = cfg(num_train_steps=STEPS)
  clock = _StepClock()
  monkeypatch.setattr(train, 'time', clock)
  with pytest.raises(preemption.Preempted):
    train.train_and_evaluate(config, str(tmp_path),
                             hooks=[clock, fault_main.Fault('trained@6:TERM')])
  with monkeypatch.context() as m:
    _failing_evaluate(m)   # a crash after the last step's checkpoint
    with pytest.raises(train.EvaluationError, match='step 11'):
      train.train_and_evaluate(config, str(tmp_path), hooks=[clock])
  with monkeypatch.context() as m:
    _failing_evaluate(m)
    config.eval.every_epochs = 100.0  # (applied on resume) no evaluation at 11 now
    with pytest.raises(train.EvaluationError, match='step 12'):
      train.train_and_evaluate(config, str(tmp_path), hooks=[clock])
  train.train_and_evaluate(config, str(tmp_path), hooks=[clock])
  final = json.loads((tmp_path / 'final_metrics.json').read_text())
  # Four segments trained 12 steps, one clock second each: dropping a segment
  # gives less, counting one twice gives more.
  assert final['wall_time_s'] == pytest.approx(STEPS)
  for k in ('train_loss', 'train_top1_error', 'train_l2_grads', 'train_learning_rate'):
    np.testing.assert_allclose(final[k], ref[1][k], rtol=1e-6, err_msg=k)


# --------------------------------------------------------------------------
# Item 12: learning rate = schedule(step) * plateau factor, logged when used
# --------------------------------------------------------------------------


class _Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Dense(3, use_bias=False)(x)


def test_plateau_drop_composes_with_warmup_and_the_logged_lr_is_the_one_used():
  config = cfg(**{'schedule.name': 'plateau', 'schedule.warmup_epochs': 1.0,
                          'optimizer.weight_decay': 0.0, 'optimizer.momentum': 0.0})
  spe = 4
  hyper, schedule = optimizer.Hyper(**config.optimizer), optimizer.Schedule(**config.schedule)
  num_steps = optimizer.total_steps(config.num_train_steps, config.num_epochs, spe)
  fn = optimizer.learning_rate_schedule(hyper, schedule, spe, num_steps)
  tx = optimizer.make_optimizer(hyper, schedule, spe, num_steps)

  model = _Linear()
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 2), np.float32))['params']
  state = steps.TrainState(step=np.int32(0), params=params, opt_state=tx.init(params),
                           plateau={})
  batch = {'image': np.ones((2, 2), np.float32), 'label': np.array([0, 1])}
  step = jax.jit(lambda s, b: steps.train_step(s, b, model=model, tx=tx,
                                               rng=jax.random.PRNGKey(1)))
  logged, want = [], []
  for i in range(4):
    if i == 2:  # a plateau drop during warmup
      state = state.replace(opt_state=optimizer.set_lr_scale(state.opt_state, 0.1))
    before = np.asarray(state.params['Dense_0']['kernel'])
    state, m = step(state, batch)
    logged.append(float(m['learning_rate']))
    want.append(float(fn(i)) * (0.1 if i >= 2 else 1.0))
    # With momentum and weight decay 0 the update is -eps * grad: eps is what moved w.
    grad = jax.grad(lambda p: steps.cross_entropy(
        model.apply({'params': p}, batch['image']), batch['label']).mean())(
            {'Dense_0': {'kernel': before}})['Dense_0']['kernel']
    np.testing.assert_allclose(np.asarray(state.params['Dense_0']['kernel']),
                               before - want[-1] * np.asarray(grad), rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(logged, want, rtol=1e-6)
  assert want[1] > 0 and want[2] < fn(2)   # warmup rises; the drop holds under it.
