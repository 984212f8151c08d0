r"""Expands a sweep file into runs of `alexnet_jax.main`, and runs them.

A sweep file is a Python module holding data only:

  BASE = 'configs/ilsvrc.py'        # base config, `path` or `path:arg`
  COMMON = {'num_epochs': 2.0}      # optional: overrides shared by every run
  def get_sweep():                  # one dict per run: config overrides
    return [{'name': 'baseline'}, {'name': 'no_lrn', 'model.lrn': False}]

Each run gets the workdir WORKDIR_ROOT/<its overrides>, e.g. `model.lrn-False`
(`baseline` when it has none), so a run's name says what it changed.

  python -m alexnet_jax.sweep --sweep=configs/sweeps/paper_ablations.py \
      --workdir_root=/ckpt/ablations [--engine=local|slurm] [--dry_run] \
      [-- --config.num_epochs=30 ...]

--dry_run prints the exact commands (a shell script doing what the engine
would do). --engine=local runs them one after another on this machine, with
the interpreter running the sweep (sys.executable; --python names another);
--engine=slurm writes the runs to WORKDIR_ROOT/<sweep>.runs and submits one
job array (launch/slurm.sbatch), task i running line i. Arguments after `--`
go to every run (before the run's own overrides, which win). Every run's
flags are parsed against its config before anything starts, so a mistyped
key fails here, not an hour into a job array. Run from the repository root:
config paths are relative to it. See launch/README.md.
"""

import dataclasses
import hashlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from typing import Any, Mapping, Sequence

from absl import flags

from alexnet_jax import cli
from alexnet_jax import main as main_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs parse exactly as main parses: its default config and flag definitions.
MAIN_DEFAULT_CONFIG = main_lib.DEFAULT_CONFIG
MAIN_MODULE = 'alexnet_jax.main'
BASELINE_NAME = 'baseline'

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: what it changes, where it writes, main's flags."""
  index: int
  name: str
  overrides: Mapping[str, Any]   # the entry's own overrides
  workdir: str
  args: tuple[str, ...]          # flags for `python -m alexnet_jax.main`


def resolve(path: str) -> str:
  """`path` if it exists, else the same path under the repository root."""
  if os.path.exists(path) or os.path.isabs(path):
    return path
  return os.path.join(REPO_ROOT, path)


def load_sweep_module(path: str):
  """Imports a sweep file by path."""
  path = resolve(path)
  name = '_sweep_' + re.sub(r'\W', '_', os.path.splitext(path)[0])
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f'No sweep file at {path}')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sweep_name(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def format_value(value: Any) -> str:
  """A config value as config_flags parses it back from the command line."""
  if isinstance(value, str):
    return value
  if isinstance(value, (tuple, list)):
    items = ','.join(format_value(v) if not isinstance(v, str) else repr(v)
                     for v in value)
    return f'({items},)' if len(value) == 1 else f'({items})'
  return repr(value)


def run_dirname(overrides: Mapping[str, Any]) -> str:
  """The workdir name of a run: its overrides, e.g. `model.lrn-False`."""
  if not overrides:
    return BASELINE_NAME
  parts = [f'{k}-{format_value(v)}' for k, v in overrides.items()]
  name = re.sub(r'[^A-Za-z0-9._,+-]', '_', ','.join(parts))
  if len(name) > 200:   # file names stop at 255 bytes
    name = name[:180] + '_' + hashlib.sha256(name.encode()).hexdigest()[:12]
  return name


def entry_overrides(entry: Mapping[str, Any]) -> dict[str, Any]:
  """An entry's config overrides: everything but its optional 'name'."""
  return {k: v for k, v in entry.items() if k != 'name'}


def split_extra_args(extra: Sequence[str]) -> tuple[dict[str, str], list[str]]:
  """Splits args after `--` into config overrides and other flags for main."""
  overrides, others = {}, []
  for arg in extra:
    m = re.fullmatch(r'--config\.([\w.]+)=(.*)', arg, flags=re.DOTALL)
    if m:
      overrides[m.group(1)] = m.group(2)
    elif re.match(r'--?(no)?config\.', arg):
      raise ValueError(f'Write config overrides as --config.KEY=VALUE: {arg}')
    else:
      others.append(arg)
  return overrides, others


def expand(sweep_path: str, workdir_root: str, base_config: str | None = None,
           extra: Sequence[str] = (), only: Sequence[str] = ()) -> list[Run]:
  """The runs of a sweep file, in its order."""
  module = load_sweep_module(sweep_path)
  base = base_config or module.BASE
  common = dict(getattr(module, 'COMMON', {}))
  extra_overrides, extra_flags = split_extra_args(extra)
  runs, seen = [], {}
  for entry in module.get_sweep():
    overrides = entry_overrides(entry)
    dirname = run_dirname(overrides)
    name = entry.get('name', dirname)
    if dirname in seen:
      raise ValueError(f'Entries {seen[dirname]!r} and {name!r} have the same '
                       f'overrides ({dirname}).')
    seen[dirname] = name
    if only and name not in only:
      continue
    merged = {k: format_value(v) for k, v in common.items()}
    for source in (extra_overrides, overrides):
      for k, v in source.items():
        merged.pop(k, None)   # one flag per key, the last source wins
        merged[k] = format_value(v)
    workdir = workdir_root.rstrip('/') + '/' + dirname
    args = (f'--config={base}', f'--workdir={workdir}',
            *(f'--config.{k}={v}' for k, v in merged.items()), *extra_flags)
    runs.append(Run(len(runs), name, overrides, workdir, args))
  missing = set(only) - {r.name for r in runs}
  if missing:
    raise ValueError(f'--only names no entry: {sorted(missing)}')
  return runs


def parse_main_flags(args: Sequence[str], known_only: bool = False):
  """Parses `args` as main does; returns (config, workdir).

  A fresh FlagValues with main's definitions: `--config` loaded by
  config_flags (lock_config=True, so an unknown key raises) and `--workdir`.
  """
  argv = ['main', *args]
  fv = flags.FlagValues()
  main_lib.define_flags(fv, argv)
  fv(argv, known_only=known_only)
  return fv['config'].value, fv['workdir'].value


def validate(runs: Sequence[Run]) -> None:
  """Raises ValueError unless main would accept every run's flags.

  Config overrides of every run here (a typo or a bad value fails); main's
  other flags once, by main itself in a subprocess (all runs share them).
  """
  for run in runs:
    unknown = cli.config_flag_problems(run.args, MAIN_DEFAULT_CONFIG)
    if unknown:
      raise ValueError(f'Run {run.index} ({run.name}): {" ".join(unknown)}')
    try:
      parse_main_flags(run.args, known_only=True)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'Run {run.index} ({run.name}): {e}') from e
  if runs:
    code = ('import sys; from absl import flags; from alexnet_jax import main; '
            'main.define_flags(); flags.FLAGS(sys.argv)')
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
        p for p in (REPO_ROOT, os.environ.get('PYTHONPATH')) if p)}
    out = subprocess.run([sys.executable, '-c', code, *runs[0].args], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode:
      raise ValueError(f'{MAIN_MODULE} rejects the flags of run 0 '
                       f'({runs[0].name}): {out.stderr.strip()[-2000:]}')


def define_flags():
  """Defines the command-line flags (when run as a program, not on import)."""
  flags.DEFINE_string('sweep', None, 'Sweep file (Python, data only).')
  flags.DEFINE_string('workdir_root', None,
                      'Each run writes to WORKDIR_ROOT/<its overrides>.')
  flags.mark_flags_as_required(['sweep', 'workdir_root'])
  flags.DEFINE_string('base_config', None,
                      "Base config `path[:arg]`; default: the sweep's BASE.")
  flags.DEFINE_enum('engine', 'local', ['local', 'slurm'],
                    'local: one after another here; slurm: a job array.')
  flags.DEFINE_bool('dry_run', False, 'Print the commands only.')
  flags.DEFINE_list('only', [], 'Run only these entries (by name).')
  flags.DEFINE_string('python', None, 'Python interpreter to run; default: local: this '
                      "one (sys.executable), slurm: the job's `python`.")
  flags.DEFINE_bool('skip_done', True,
                    'local: skip runs whose final_metrics.json exists.')
  flags.DEFINE_bool('keep_going', False,
                    'local: go on to the next run after a failure.')
  flags.DEFINE_string('sbatch_script', 'launch/slurm.sbatch',
                      'slurm: the batch script.')
  flags.DEFINE_string('sbatch_args', '', "slurm: extra sbatch options, e.g. "
                      "'--nodes=2 --partition=gpu'.")
  flags.DEFINE_integer('max_parallel', 0,
                       'slurm: at most this many array tasks at once (0: any).')


# ------------------------------------------------------------------ engines


def local_commands(runs: Sequence[Run], python: str) -> list[list[str]]:
  return [[python, '-m', MAIN_MODULE, *run.args] for run in runs]


def runs_file(workdir_root: str, sweep_path: str) -> str:
  return workdir_root.rstrip('/') + '/' + sweep_name(sweep_path) + '.runs'


def sbatch_command(runs: Sequence[Run], sweep_path: str, runs_path: str,
                   python: str = 'python', sbatch_args: str = '',
                   max_parallel: int = 0,
                   script: str = 'launch/slurm.sbatch') -> list[str]:
  array = f'0-{len(runs) - 1}' + (f'%{max_parallel}' if max_parallel else '')
  cmd = ['sbatch', f'--array={array}', f'--job-name={sweep_name(sweep_path)}']
  if python != 'python':
    cmd.append(f'--export=ALL,PYTHON={python}')
  return [*cmd, *shlex.split(sbatch_args), script, f'--runs={runs_path}']


def dry_run_text(runs: Sequence[Run], sweep_path: str, engine: str,
                 workdir_root: str, python: str = 'python', **slurm) -> str:
  """A shell script doing what `engine` would do."""
  lines = [f'# {sweep_path}: {len(runs)} runs, engine={engine}']
  if engine == 'local':
    for run, cmd in zip(runs, local_commands(runs, python)):
      lines += [f'# [{run.index}] {run.name}', shlex.join(cmd)]
  else:
    path = runs_file(workdir_root, sweep_path)
    lines += [shlex.join(['mkdir', '-p', workdir_root]),
              f"cat > {shlex.quote(path)} <<'EOF'"]
    lines += [shlex.join(run.args) for run in runs]
    lines += ['EOF', shlex.join(
        sbatch_command(runs, sweep_path, path, python, **slurm))]
  return '\n'.join(lines) + '\n'


def run_local(runs: Sequence[Run], python: str, skip_done: bool,
              keep_going: bool) -> int:
  failed = []
  for run, cmd in zip(runs, local_commands(runs, python)):
    done = os.path.exists(os.path.join(run.workdir, 'final_metrics.json'))
    if skip_done and done:
      print(f'# [{run.index}] {run.name}: done, skipped', flush=True)
      continue
    print(f'# [{run.index}] {run.name}\n{shlex.join(cmd)}', flush=True)
    if subprocess.run(cmd, check=False).returncode:
      failed.append(run.name)
      if not keep_going:
        break
  if failed:
    print(f'# failed: {", ".join(failed)}', file=sys.stderr)
  return 1 if failed else 0


def run_slurm(runs: Sequence[Run], sweep_path: str, workdir_root: str,
              python: str, **slurm) -> int:
  os.makedirs(workdir_root, exist_ok=True)
  path = runs_file(workdir_root, sweep_path)
  with open(path, 'w') as f:
    f.writelines(shlex.join(run.args) + '\n' for run in runs)
  cmd = sbatch_command(runs, sweep_path, path, python, **slurm)
  print(shlex.join(cmd), flush=True)
  return subprocess.run(cmd, check=False).returncode


def main(argv: Sequence[str]) -> int:
  runs = expand(FLAGS.sweep, FLAGS.workdir_root, FLAGS.base_config,
                extra=argv[1:], only=FLAGS.only)
  validate(runs)  # A ValueError: one ERROR line, status 1 (cli).
  python = FLAGS.python or (sys.executable if FLAGS.engine == 'local' else 'python')
  slurm = dict(sbatch_args=FLAGS.sbatch_args,
               max_parallel=FLAGS.max_parallel, script=FLAGS.sbatch_script)
  if FLAGS.dry_run:
    sys.stdout.write(dry_run_text(
        runs, FLAGS.sweep, FLAGS.engine, FLAGS.workdir_root, python,
        **(slurm if FLAGS.engine == 'slurm' else {})))
    return 0
  if FLAGS.engine == 'local':
    return run_local(runs, python, FLAGS.skip_done, FLAGS.keep_going)
  return run_slurm(runs, FLAGS.sweep, FLAGS.workdir_root, python,
                   **slurm)


if __name__ == '__main__':
  cli.run(main, define_flags, args='-- FLAGS (passed on to every run)', optional_args=True)
