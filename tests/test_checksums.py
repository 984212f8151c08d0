"""Checksums of checkpoint arrays (issue 18 item 4): silent corruption of the
stored bytes is caught on every read, and a run falls back to the previous step."""

import glob
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import train
from tests.test_faults import STEPS, assert_state_equal, cfg, steps_of


def reference_checksum(x: np.ndarray) -> str:
  """The checksum transcribed in Python integers (an independent reference)."""
  words = np.ascontiguousarray(x).view(np.uint32).reshape(-1).tolist() if x.dtype.itemsize == 4 \
      else np.ascontiguousarray(x).astype(np.uint32).reshape(-1).tolist()
  m = 2**32

  def mix(x):  # MurmurHash3 fmix32
    x = ((x ^ (x >> 16)) * 0x85EBCA6B) % m
    x = ((x ^ (x >> 13)) * 0xC2B2AE35) % m
    return x ^ (x >> 16)

  a = b = 0
  for i, w in enumerate(words):
    a = (a + mix(w ^ ((i * 0x9E3779B1) % m))) % m
    b = (b + mix((((w << 16) | (w >> 16)) % m) ^ mix(i ^ 0x5BD1E995))) % m
  return f'{a:08x}{b:08x}'


def test_checksum_matches_a_python_transcription_on_any_sharding():
  rng = np.random.default_rng(0)
  tree = {'w': rng.standard_normal((8, 6)).astype(np.float32),
          'n': np.arange(5, dtype=np.int32), 's': np.float32(3.5),
          'b': rng.standard_normal((3,)).astype(jax.numpy.bfloat16)}
  got = ckpt_lib.array_checksums(tree)
  assert got['w'] == reference_checksum(tree['w'])
  assert got['n'] == reference_checksum(tree['n'])
  assert got['s'] == reference_checksum(np.asarray(tree['s']))
  assert got['b'] == reference_checksum(tree['b'].view(np.uint16))
  # Sharded over 8 devices (rows) or 4 x 2: the same value as on the host.
  mesh = jax.make_mesh((4, 2), ('a', 'b'))
  for spec in (jax.P('a', 'b'), jax.P(None, 'b'), jax.P(('a', 'b')), jax.P()):
    x = jax.device_put(tree['w'], jax.NamedSharding(mesh, spec))
    assert ckpt_lib.array_checksums({'w': x})['w'] == got['w'], spec


def test_every_single_bit_flip_and_a_swap_change_the_checksum():
  x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
  base = ckpt_lib.array_checksums({'x': x})['x']
  words = x.view(np.uint32)
  flipped = np.repeat(words[None], 12 * 32, axis=0)  # one copy per (word, bit)
  for k in range(12 * 32):
    flipped[k].reshape(-1)[k // 32] ^= np.uint32(1 << (k % 32))
  # One array per call: the program compiled for `base` serves all (a 384-array
  # tree would compile a program of 384 checksums, ~20 s).
  sums = {k: ckpt_lib.array_checksums({'x': f.view(np.float32)})['x']
          for k, f in enumerate(flipped)}
  assert base not in sums.values() and len(set(sums.values())) == 12 * 32
  swapped = x.copy()
  swapped[0, 0], swapped[2, 1] = x[2, 1], x[0, 0]
  assert ckpt_lib.array_checksums({'x': swapped})['x'] != base


# --------------------------------------------------------------------------
# A flipped byte in a saved checkpoint
# --------------------------------------------------------------------------


@pytest.fixture
def trained(reference_run):
  """A finished 12-step run of cfg() (steps 8, 11, 12 kept) and its final state:
  tests/conftest.py's reference_run (read only; copy it to change it)."""
  return reference_run[:2]


def flip_a_byte(step_path) -> str:
  """Flips one bit in the largest array data file of the step (orbax's ocdbt
  data under state/), at the first byte from an eighth in where orbax still
  reads the arrays without an error and with a changed value (the corruption
  is silent without checksums; parts of the file are not read at all);
  returns the file."""
  data = max(glob.glob(os.path.join(step_path, 'state', 'ocdbt.process_0', 'd', '*')),
             key=os.path.getsize)
  original = ocp.StandardCheckpointer().restore(os.path.join(step_path, 'state'))
  size = os.path.getsize(data)
  for offset in range(size // 8, size, max(1, size // 40)):
    with open(data, 'r+b') as f:
      f.seek(offset)
      byte = f.read(1)[0]
      f.seek(offset)
      f.write(bytes([byte ^ 0x10]))
    try:
      tree = ocp.StandardCheckpointer().restore(os.path.join(step_path, 'state'))
    except Exception:  # pylint: disable=broad-except  (a loud corruption: try another byte)
      tree = None
    if tree is not None and any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(original), jax.tree.leaves(tree))):
      return data
    with open(data, 'r+b') as f:  # undo; try the next byte
      f.seek(offset)
      f.write(bytes([byte]))
  raise AssertionError(f'no byte of {data} changes the arrays silently')


def test_every_saved_array_is_checked_by_both_readers(trained):
  """The record names each array of the state by the same key as the training
  restore (a TrainState) and load_params (the dicts orbax reads) compute."""
  step = trained[0] / 'checkpoints' / '12'
  saved = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step / 'checksums')
  assert saved['arrays'] == ckpt_lib.array_checksums(trained[1])
  raw = ocp.PyTreeCheckpointer().restore(step / 'state')
  assert ckpt_lib.array_checksums(raw) == saved['arrays']


def test_a_flipped_byte_moves_the_step_aside_and_the_run_falls_back(
    trained, tmp_path, caplog):
  workdir = tmp_path / 'w'
  shutil.copytree(trained[0], workdir)
  assert steps_of(workdir) == [8, 11, 12]
  flip_a_byte(workdir / 'checkpoints' / '12')
  caplog.set_level('WARNING')
  state = train.train_and_evaluate(cfg(num_train_steps=STEPS), str(workdir))
  # Step 12 failed its checksums: put aside, resumed from 11, retrained to 12.
  assert [p.name.split('-')[0] for p in (workdir / 'checkpoints-corrupt').iterdir()] == ['12']
  warned = [r.getMessage() for r in caplog.records if 'cannot be read' in r.getMessage()]
  assert len(warned) == 1 and 'step 12' in warned[0] and 'checksums' in warned[0], warned
  assert steps_of(workdir) == [8, 11, 12]
  assert_state_equal(trained[1], state)


def test_load_params_verifies_and_passes_over_a_corrupt_step(trained, tmp_path, caplog):
  """predict, ensemble, figures and init_from read through load_params."""
  workdir = tmp_path / 'w'
  shutil.copytree(trained[0], workdir)
  want, _, _ = ckpt_lib.load_params(str(workdir / 'checkpoints' / '11'))
  flip_a_byte(workdir / 'checkpoints' / '12')
  with pytest.raises(ckpt_lib.CheckpointCorruptError, match='do not match the checksums'):
    ckpt_lib.load_params(str(workdir / 'checkpoints' / '12'))   # named itself: refused
  caplog.set_level('WARNING')
  got, _, step = ckpt_lib.load_params(str(workdir))             # the workdir: step 11
  assert step == 11
  assert any('checkpoints/12 cannot be read' in r.getMessage() for r in caplog.records)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
  assert steps_of(workdir) == [8, 11, 12]   # a reader moves nothing
  # best/ holds one step: corrupt, it is refused in one message.
  best = steps_of(workdir, 'best')[-1]
  flip_a_byte(workdir / 'best' / str(best))
  with pytest.raises(ckpt_lib.CheckpointCorruptError, match=f'best/{best}'):
    ckpt_lib.load_params(str(workdir), 'best')
