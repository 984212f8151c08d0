"""launch/slurm.sbatch and `sweep --engine=slurm` on a real Slurm (issue 27).

Needs a Slurm cluster with a node that is up and has at least 2 CPUs: `sudo
launch/local_slurm.sh` starts one on this machine. Without one every test
here is skipped with one line naming that script; in CI (CI=true) .ci/run has
started one, and its absence fails the run instead.

Jobs run the tiny digits config on the CPU (`CPU_JOB`: no GPUs, one CPU a
task). Faults come from tests/fault_main.py through a PYTHON wrapper
(`_fault_python`) that injects one into one task, chosen for each start;
the scheduler's side (scancel, srun, requeue, MAX_RESTARTS) is Slurm's own.
A requeued job waits for its begin time (2 minutes, set by Slurm on
requeue); the tests release it as soon as its last start has ended (`scontrol
update StartTime=now`; `scontrol release` does not: the job is not held).

The jobs cost start-ups (imports, compiles from the session's cache): one
job carries the three task faults, one start each, and the preempted job
runs beside its uninterrupted reference.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import tiny_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = 'launch/local_slurm.sh'


def _slurm_up() -> bool:
  if not shutil.which('sinfo'):
    return False
  try:  # sinfo waits for a controller that is down: not for long
    out = subprocess.run(['sinfo', '--noheader', '--format=%t %c'], capture_output=True,
                         text=True, check=False, timeout=10)
  except subprocess.TimeoutExpired:
    return False
  return any(line.split()[0] in ('idle', 'mix', 'alloc') and int(line.split()[1]) >= 2
             for line in out.stdout.splitlines() if len(line.split()) == 2)


SLURM_UP = _slurm_up()
if not SLURM_UP and os.environ.get('CI') == 'true':
  # .ci/run starts the cluster (as root, launch/local_slurm.sh): there these run, never skip.
  pytest.fail(f'CI=true and no Slurm with a node of >= 2 CPUs up: .ci/run starts one with '
              f'{SCRIPT}; see its log above', pytrace=False)
if not SLURM_UP:
  pytest.skip(f'no Slurm with a node of >= 2 CPUs up: start one with `sudo {SCRIPT}`',
              allow_module_level=True)

pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.filterwarnings('ignore:Sharding info not provided')]

# The README's CPU example: no GPUs, one CPU a task.
CPU_JOB = ['--gpus-per-node=0', '--cpus-per-task=1']
STEPS = 12   # checkpoints every 4 steps, evaluations at 11 and 12 (tests/conftest.py TINY)
FLAGS = ['--config=configs/digits.py', *tiny_flags(**{
    'eval.ten_crop': False, 'num_train_steps': STEPS})]
TIMEOUT_S = 300  # for a job to reach a state; jobs of other tests may hold the CPUs


def _env(**extra):
  """The job's environment (sbatch exports the submitter's): this Python
  first on PATH, one CPU device a task, the session's compilation cache."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1',
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
  env.pop('SLURM_JOB_ID', None)
  env.update(extra)
  return env


def _fault_python(tmp_path, task, faults):
  """A PYTHON for slurm.sbatch: at start i (SLURM_RESTART_COUNT), task `task`
  runs tests/fault_main.py with main's flags and then `faults[i]` (its
  --fault= flag, and flags of its own), the others main; no fault at a start that
  `faults` lacks. Each task writes its pid to tmp_path/pid.TASK.START."""
  path = tmp_path / 'fault_python'
  cases = ''.join(f'  {i}) flags=({shlex.join(f)});;\n' for i, f in enumerate(faults))
  path.write_text(f'''#!/bin/bash
shift 3  # -u -m alexnet_jax.main
start="${{SLURM_RESTART_COUNT:-0}}"
echo $$ > {tmp_path}/pid.${{SLURM_PROCID}}.${{start}}
flags=()
case "${{start}}" in
{cases}esac
if [[ "${{SLURM_PROCID}}" == {task} && ${{#flags[@]}} -gt 0 ]]; then
  exec {shlex.quote(sys.executable)} -u tests/fault_main.py "$@" "${{flags[@]}}"
fi
exec {shlex.quote(sys.executable)} -u -m alexnet_jax.main "$@"
''')
  path.chmod(0o755)
  return str(path)


def _sbatch(out, *args, env=None):
  """Submits launch/slurm.sbatch (log to `out`); the job id."""
  proc = subprocess.run(['sbatch', '--parsable', f'--output={out}', *CPU_JOB, *args],
                        cwd=ROOT, env=env or _env(), capture_output=True, text=True,
                        check=True)
  return proc.stdout.strip().split(';')[0]


def _job(job):
  """scontrol's record of `job`: {'JobState': 'RUNNING', 'Restarts': '0', ...}."""
  out = subprocess.run(['scontrol', '--oneliner', 'show', 'job', job],
                       capture_output=True, text=True, check=True).stdout
  return dict(re.findall(r'(\w+)=(\S*)', out))


def _wait(job, until, what, timeout=TIMEOUT_S):
  """Polls `job`'s record until `until(record)`; returns the record."""
  deadline = time.monotonic() + timeout
  while True:
    record = _job(job)
    if until(record):
      return record
    if time.monotonic() > deadline:
      subprocess.run(['scancel', job], check=False)
      raise AssertionError(f'job {job}: not {what} after {timeout} s: {record}')
    time.sleep(0.5)


def _ended(job, timeout=TIMEOUT_S):
  return _wait(job, lambda r: r['JobState'] in ('COMPLETED', 'FAILED', 'CANCELLED',
                                                 'TIMEOUT', 'NODE_FAIL', 'OUT_OF_MEMORY'),
               'ended', timeout)


def _requeued(job, restarts):
  """Waits until `job` is queued again after its `restarts`-th requeue and
  its last start has ended on the node, then releases it from the begin time
  Slurm sets on requeue. (Released while its old step still ends, the job is
  refused a start: 'Job credential revoked', FAILED.)"""
  record = _wait(job, lambda r: r['JobState'] == 'PENDING' and r['Restarts'] == str(restarts),
                 f'requeued ({restarts})')
  deadline = time.monotonic() + TIMEOUT_S
  while _on_node(job):
    assert time.monotonic() < deadline, f'job {job}: processes left after the requeue'
    time.sleep(0.5)
  time.sleep(1.5)  # slurmd compares credential times in whole seconds
  subprocess.run(['scontrol', 'update', f'JobId={job}', 'StartTime=now'], check=True)
  return record


def _on_node(job) -> bool:
  """Whether any of `job`'s steps still runs on this (the only) node: its
  processes (`scontrol listpids`), or a step's slurmstepd, which can outlive
  them by seconds (the batch step ends first; seen: its srun step 3 s later,
  and a start released in between was refused, 'Job 35 already killed')."""
  if subprocess.run(['scontrol', 'listpids', job], capture_output=True, text=True,
                    check=False).returncode == 0:
    return True
  return subprocess.run(['pgrep', '-f', rf'^slurmstepd: \[{job}\.'],
                        capture_output=True, check=False).returncode == 0


def _segments(out):
  """The job's log (`out`), split at the line slurm.sbatch writes at each start."""
  text = open(out).read()
  return re.split(r'^\S+ job \d+ task \S+: .*$', text, flags=re.M)[1:]


def _errors(text):
  return [line for line in text.splitlines() if line.startswith('ERROR:')]


def _pid(tmp_path, task, start, timeout=TIMEOUT_S):
  path = tmp_path / f'pid.{task}.{start}'
  deadline = time.monotonic() + timeout
  while not path.exists() or not path.read_text().strip():
    assert time.monotonic() < deadline, f'{path}: no task started'
    time.sleep(0.2)
  return int(path.read_text())


def _wait_stopped(pid, timeout=TIMEOUT_S):
  """Waits until process `pid` is stopped (SIGSTOP: state T)."""
  deadline = time.monotonic() + timeout
  while open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[0] != 'T':
    assert time.monotonic() < deadline, f'process {pid} not stopped'
    time.sleep(0.2)


def _state(workdir, step=STEPS):
  """The saved train state of `step` (params, optimizer state) as NumPy arrays."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  state = ocp.PyTreeCheckpointer().restore(str(workdir / 'checkpoints' / str(step) / 'state'))
  return jax.tree_util.tree_flatten_with_path(jax.tree.map(np.asarray, state))[0]


# --------------------------------------------------------------------------


def test_a_job_runs_to_the_end_and_a_preempted_one_resumes_bit_for_bit(tmp_path):
  """Items 1 and 2: an uninterrupted job, and beside it (the node has 2 CPUs)
  the same job stopped by `scancel --signal=TERM` mid-run: it logs the step
  it stopped at, exits 75, requeues itself, resumes at that step and ends
  with the same parameters and optimizer state, bit for bit.

  So that the signal lands mid-run on a loaded machine, the job's one task
  stops itself (SIGSTOP) after step 6; the TERM is sent while it is stopped,
  then a CONT."""
  ref_out, out = tmp_path / 'ref.out', tmp_path / 'job.out'
  ref = _sbatch(ref_out, '--ntasks-per-node=1', 'launch/slurm.sbatch', *FLAGS,
                f'--workdir={tmp_path}/ref')
  python = _fault_python(tmp_path, 0, [['--fault=trained@6:STOP']])
  job = _sbatch(out, '--ntasks-per-node=1', 'launch/slurm.sbatch', *FLAGS,
                f'--workdir={tmp_path}/run', env=_env(PYTHON=python))
  _wait_stopped(_pid(tmp_path, 0, 0))
  subprocess.run(['scancel', '--signal=TERM', job], check=True)
  subprocess.run(['scancel', '--signal=CONT', job], check=True)
  _requeued(job, 1)
  assert _ended(job)['JobState'] == 'COMPLETED', open(out).read()[-3000:]
  assert _ended(ref)['JobState'] == 'COMPLETED', open(ref_out).read()[-3000:]

  assert (tmp_path / 'ref' / 'final_metrics.json').exists()
  first, second = _segments(out)
  [stopped] = re.findall(r'Preempted at step (\d+) of 12; checkpoint saved', first)
  assert 'stopped (exit 75): requeueing (restart 1 of at most 10)' in first, first[-3000:]
  assert f'resuming at step {stopped}.' in second, second[-3000:]
  assert 'Done:' in second and not _errors(first + second)
  ref_state, state = _state(tmp_path / 'ref'), _state(tmp_path / 'run')
  assert [k for k, _ in ref_state] == [k for k, _ in state]
  for (key, a), (_, b) in zip(ref_state, state):
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), key


def test_two_tasks_killed_stopped_hung_each_requeue_and_the_job_finishes(tmp_path):
  """Items 3 and 5: two tasks (jax.distributed from Slurm's variables); task 1
  fails after step 6 at each of three starts of one job, then the job ends:

  0. kill -9: task 0 prints one ERROR line and exits; the job requeues.
  1. SIGSTOP (a hung host): task 0 stops within the heartbeat timeout (10 s
     here, parallel.HEARTBEAT_TIMEOUT_S by default) with one ERROR line; the
     job requeues.
  2. blocked for good while its process and heartbeats live (fault HANG):
     the watchdog (45 s on this start only: the first compiles of two
     processes on 2 loaded cores leave gaps of ~25 s) ends it with its one
     line; the job requeues.
  3. no fault: it resumes from step 4 (the last checkpoint before step 6)
     and finishes.
  """
  out = tmp_path / 'job.out'
  heartbeat = 10
  python = _fault_python(tmp_path, 1, [
      ['--fault=trained@6:KILL'], ['--fault=trained@6:STOP'],
      ['--fault=trained@6:HANG', '--config.watchdog_minutes=0.75']])
  job = _sbatch(out, '--ntasks-per-node=2', 'launch/slurm.sbatch', *FLAGS,
                f'--workdir={tmp_path}/run',
                env=_env(PYTHON=python, ALEXNET_HEARTBEAT_TIMEOUT_S=str(heartbeat)))
  _requeued(job, 1)
  _wait_stopped(_pid(tmp_path, 1, 1))
  stopped = time.monotonic()
  _requeued(job, 2)
  took = time.monotonic() - stopped
  assert took < heartbeat + 30, took
  _requeued(job, 3)
  assert _ended(job)['JobState'] == 'COMPLETED', open(out).read()[-3000:]

  killed, stopped, hung, last = _segments(out)
  assert 'process 0 of 2' in killed and 'process 1 of 2' in killed, killed[-3000:]
  [line] = _errors(killed)
  assert 'Lost process 1 of 2' in line and 'The last checkpoint is step 4' in line, line
  # Task 1, continued by srun to be ended, may find task 0 gone: a line of its own.
  [line] = [e for e in _errors(stopped) if 'stopped process 0' in e]
  assert 'stopped sending heartbeats' in line and 'The last checkpoint is step 4' in line, line
  watchdog = [e for e in _errors(hung) if 'No training step or evaluation batch' in e]
  # One line from each process whose watchdog fires: the hung one, and the
  # other when its own fires before srun ends it.
  assert 1 <= len(watchdog) <= 2 and len(_errors(hung)) <= 2, hung[-3000:]
  assert 'config.watchdog_minutes=0.75' in watchdog[0]
  assert 'watchdog: no progress; stacks of process' in (
      tmp_path / 'run' / 'errors.log').read_text()
  for i, segment in enumerate((killed, stopped, hung)):
    assert re.search(rf'stopped \(exit (75|137)\): requeueing \(restart {i + 1} of at most 10\)',
                     segment), segment[-3000:]
    assert 'Done:' not in segment
  for segment in (stopped, hung, last):
    assert 'resuming at step 4.' in segment, segment[-3000:]
  assert 'Done:' in last and not _errors(last), last[-3000:]
  assert (tmp_path / 'run' / 'final_metrics.json').exists()


def test_a_job_failing_at_every_start_stops_after_max_restarts(tmp_path):
  """Item 4: its task killed (kill -9) at every start, just after its
  imports: the job requeues MAX_RESTARTS=2 times, then ends with one line
  saying so. Beside it, an error (a mistyped key: exit status 2) is not
  requeued at all."""
  out = tmp_path / 'job.out'
  python = _fault_python(tmp_path, 0, [['--fault=import:KILL']] * 3)
  job = _sbatch(out, '--ntasks-per-node=1', 'launch/slurm.sbatch', *FLAGS,
                f'--workdir={tmp_path}/run', env=_env(PYTHON=python, MAX_RESTARTS='2'))
  typo = _sbatch(tmp_path / 'typo.out', '--ntasks-per-node=1', 'launch/slurm.sbatch',
                 *FLAGS, '--config.batch_sizes=8', f'--workdir={tmp_path}/typo')
  record = _ended(typo)
  assert (record['JobState'], record['ExitCode'], record['Restarts']) == (
      'FAILED', '2:0', '0'), record
  assert 'requeueing' not in (tmp_path / 'typo.out').read_text()
  _requeued(job, 1)
  _requeued(job, 2)
  record = _ended(job)
  assert record['JobState'] == 'FAILED' and record['Restarts'] == '2', record
  segments = _segments(out)
  assert len(segments) == 3, segments
  for i in range(2):
    assert f'stopped (exit 137): requeueing (restart {i + 1} of at most 2)' in segments[i]
  [line] = [line for line in segments[2].splitlines() if 'requeueing' in line]
  assert re.fullmatch(r'\S+ job \d+ stopped \(exit 137\) after 2 restarts \(MAX_RESTARTS=2\): '
                      r'not requeueing; see the errors above, then resubmit \(it resumes\)',
                      line), line


def test_sweep_submits_a_job_array_and_report_tabulates_it(tmp_path):
  """Item 5 of the issue's checks: `sweep --engine=slurm` submits one job
  array; each member finishes; `report` writes the table and the curves."""
  root = tmp_path / 'smoke'
  sbatch_args = ' '.join([*CPU_JOB, '--ntasks-per-node=1', f'--output={tmp_path}/%A_%a.out'])
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.sweep', '--sweep=configs/sweeps/digits_smoke.py',
       f'--workdir_root={root}', '--engine=slurm', '--only=baseline,no_lrn',
       f'--sbatch_args={sbatch_args}', '--', *FLAGS[1:]],
      cwd=ROOT, env=_env(), capture_output=True, text=True, check=True)
  [array] = re.findall(r'Submitted batch job (\d+)', proc.stdout)
  for task in range(2):
    record = _ended(f'{array}_{task}')
    assert record['JobState'] == 'COMPLETED', record
  runs = sorted(p.name for p in root.iterdir() if (p / 'final_metrics.json').exists())
  assert runs == ['baseline', 'model.lrn-False']
  report = subprocess.run([sys.executable, '-m', 'alexnet_jax.report', str(root)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, check=True)
  assert '| no_lrn | model.lrn=False |' in report.stdout, report.stdout
  assert (root / 'report.md').exists() and (root / 'report.csv').exists()
  assert sorted(p.name for p in (root / 'report_curves').iterdir()) == [
      'baseline.png', 'no_lrn.png']
