"""alexnet_jax.prepare under faults (issue 18 item 8): byte-identical output
run to run, class folders that are empty or missing from a split refused, and
worker processes that die with a killed parent."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.test_prepare import R, ROOT, _config, _write_folder

from alexnet_jax import prepare


def _args(folder, out, *extra):
  return ['--config=configs/digits.py', '--config.dataset.source=auto',
          f'--config.dataset.folder={folder}', f'--config.input.resize_size={R}',
          '--config.model.num_classes=3', '--shard_size=5', f'--output_dir={out}', *extra]


def _digests(directory):
  return {f: hashlib.sha256((directory / f).read_bytes()).hexdigest()
          for f in sorted(os.listdir(directory))}


def test_two_runs_write_byte_identical_files(tmp_path):
  """Two processes (each its own hash seeds), JPEG, 1 and 2 workers."""
  folder = tmp_path / 'images'
  _write_folder(folder)
  runs = []
  for i, workers in enumerate((1, 2)):
    out = tmp_path / f'out{i}'
    subprocess.run([sys.executable, '-m', 'alexnet_jax.prepare',
                    *_args(folder, out, f'--workers={workers}')], cwd=ROOT, check=True,
                   capture_output=True, env={**os.environ, 'PYTHONHASHSEED': str(i + 1)},
                   timeout=300)
    runs.append(_digests(out))
  assert runs[0].keys() == runs[1].keys() and any(f.endswith('.tfrecord') for f in runs[0])
  assert runs[0] == runs[1], [f for f in runs[0] if runs[0][f] != runs[1][f]]


@pytest.mark.parametrize('fault', ['empty class folder', 'class missing from val',
                                   'class folder of other files'])
def test_a_class_without_images_in_a_split_is_refused_naming_the_folder(tmp_path, fault, capsys):
  folder = tmp_path / 'images'
  _write_folder(folder)
  if fault == 'empty class folder':
    (folder / 'train' / 'emu').mkdir()
    (folder / 'val' / 'emu').mkdir()
    named = folder / 'train' / 'emu'
  elif fault == 'class missing from val':
    for f in (folder / 'val' / 'owl').iterdir():
      f.unlink()
    (folder / 'val' / 'owl').rmdir()
    named = folder / 'val' / 'owl'
  else:
    (folder / 'val' / 'dog' / 'notes.txt').write_text('not an image')
    for f in (folder / 'val' / 'dog').glob('*.jpg'):
      f.unlink()
    named = folder / 'val' / 'dog'
  out = tmp_path / 'out'
  assert prepare.run_command(['prepare', *_args(folder, out)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('ERROR: ') and str(named) in err[0], err
  assert not out.exists()   # nothing written


def _workers_of(pid: int) -> list:
  """The pids of `pid`'s multiprocessing workers (spawned: 'spawn_main' in argv)."""
  found = []
  for p in os.listdir('/proc'):
    try:
      with open(f'/proc/{p}/stat') as f:
        ppid = int(f.read().rsplit(')', 1)[1].split()[1])
      with open(f'/proc/{p}/cmdline', 'rb') as f:
        spawned = b'spawn_main' in f.read()
    except (OSError, ValueError, IndexError):
      continue
    if ppid == pid and spawned:
      found.append(int(p))
  return found


def _alive(pid: int) -> bool:
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except OSError:
    return False


def _listing(directory) -> dict:
  return {f: os.path.getsize(directory / f) for f in os.listdir(directory)}


@pytest.mark.slow
def test_workers_die_with_a_killed_parent(tmp_path):
  """kill -9 of prepare while its two workers are inside long shards: they
  stop within seconds and write nothing more (they used to finish and rename
  their shards, then die with BrokenPipeError tracebacks)."""
  out = tmp_path / 'out'
  proc = subprocess.Popen(
      [sys.executable, '-m', 'alexnet_jax.prepare', '--config=configs/digits.py',
       '--config.input.resize_size=256', '--shard_size=800', '--workers=2',
       '--splits=train', f'--output_dir={out}'],
      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while time.time() < deadline and len(
        [f for f in (os.listdir(out) if out.exists() else []) if f.endswith('.incomplete')]) < 2:
      time.sleep(0.05)   # both workers have opened their shards
    workers = _workers_of(proc.pid)
    assert len(workers) == 2, workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _listing(out)
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(w) for w in workers):
      time.sleep(0.1)
    alive = [w for w in workers if _alive(w)]
    for w in alive:  # (clean up before failing)
      os.kill(w, signal.SIGKILL)
    assert not alive, f'workers {alive} outlived their killed parent by 5 s'
    time.sleep(1)
    assert _listing(out) == before, (before, _listing(out))
    assert not [f for f in before if f.endswith('.tfrecord')]   # killed mid-shard
  finally:
    if proc.poll() is None:
      proc.kill()


def test_training_on_a_folder_refuses_an_empty_class_before_the_workdir(tmp_path):
  """The same check guards training: the folder source itself refuses the
  class (data_sources.FolderClassError), before the workdir is touched."""
  from alexnet_jax import data_sources  # pylint: disable=g-import-not-at-top
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'images'
  _write_folder(folder)
  (folder / 'train' / 'emu').mkdir()
  workdir = tmp_path / 'run'
  with pytest.raises(data_sources.FolderClassError, match=str(folder / 'train' / 'emu')):
    train.check_config(_config(folder), str(workdir))
  assert not workdir.exists()
