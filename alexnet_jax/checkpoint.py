"""Orbax checkpoints: the last K steps plus the best by validation error.

Orbax writes each checkpoint to a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint intact.
Every checkpoint carries a small JSON record of the model config and the
parameter shapes; restoring into a different model is refused with a message.
"""

from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath


class CheckpointMismatchError(ValueError):
  """The checkpoint in the workdir was written by an incompatible config."""


def _shapes(tree: Any) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): list(np.shape(x)) for path, x in flat}


def describe(config, params: Any) -> dict:
  """The record saved beside each checkpoint, checked on restore."""
  return {'model': config.model.to_dict(), 'param_shapes': _shapes(params)}


def _json_safe(tree):
  if isinstance(tree, dict):
    return {k: _json_safe(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_json_safe(v) for v in tree]
  return tree


class Checkpointer:
  """Two orbax managers under `workdir`: `checkpoints/` (latest) and `best/`."""

  def __init__(self, workdir: str, *, every_steps: int, keep: int,
               use_async: bool = True):
    def options(name, **kw):
      # Both managers can save the same step at once; on several hosts their
      # async-commit barriers (keyed by step) would collide without a prefix.
      return ocp.CheckpointManagerOptions(
          create=True, enable_async_checkpointing=use_async,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix=name), **kw)
    workdir = epath.Path(workdir)
    self.latest = ocp.CheckpointManager(
        workdir / 'checkpoints',
        options=options('latest', max_to_keep=keep, save_interval_steps=every_steps))
    self.best = ocp.CheckpointManager(
        workdir / 'best',
        options=options('best', max_to_keep=1, best_fn=lambda m: m['top1_error'],
                        best_mode='min'))

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def restore(self, state: Any, description: dict, step: Optional[int] = None) -> Any:
    """Restores `state` (an abstract or concrete train state) from the latest step."""
    step = self.latest.latest_step() if step is None else step
    saved = self.latest.restore(step, args=ocp.args.Composite(
        description=ocp.args.JsonRestore()))['description']
    check_compatible(saved, _json_safe(description), self.latest.directory)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
    logging.info('Restored step %d from %s', step, self.latest.directory)
    return restored['state']

  def save(self, step: int, state: Any, description: dict, force: bool = False) -> bool:
    return self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        description=ocp.args.JsonSave(_json_safe(description))), force=force)

  def save_best(self, step: int, state: Any, description: dict, metrics: dict) -> None:
    self.best.save(step, metrics={k: float(v) for k, v in metrics.items()},
                   args=ocp.args.Composite(
                       state=ocp.args.StandardSave(state),
                       description=ocp.args.JsonSave(_json_safe(description))),
                   force=True)

  def close(self) -> None:
    for m in (self.latest, self.best):
      m.wait_until_finished()
      m.close()


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
  if saved.get('model') != current['model']:
    logging.warning('Resuming from a checkpoint whose model config differs (shapes match): %s',
                    {k: (v, current['model'].get(k)) for k, v in saved['model'].items()
                     if current['model'].get(k) != v})


# --------------------------------------------------------------------------
# Parameters alone (predict, figures, ensembles, config.init_from)
# --------------------------------------------------------------------------


def step_dir(path: str, which: str = 'latest') -> epath.Path:
  """A checkpoint step directory from a workdir, a manager directory
  (`checkpoints/`, `best/`) or a step directory itself.

  which: 'latest' (the workdir's `checkpoints/`) or 'best' (its `best/`).
  """
  if which not in ('latest', 'best'):
    raise ValueError(f"which must be 'latest' or 'best', got {which!r}.")
  path = epath.Path(path)
  if (path / 'state').is_dir():
    return path
  manager = path / ('best' if which == 'best' else 'checkpoints')
  if manager.is_dir():
    path = manager
  steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.is_dir() else []
  if not steps:
    raise FileNotFoundError(
        f'No checkpoint in {path}. Give a workdir that holds checkpoints/ (or best/), '
        'such a directory, or one of its step directories.')
  return path / str(steps[-1])


def load_params(path: str, which: str = 'latest') -> tuple[Any, dict, int]:
  """(params as NumPy arrays, the saved description, step) of a checkpoint.

  Reads only what was saved (no model or optimizer needed), on any number of
  devices. `path` and `which` as in `step_dir`.
  """
  directory = step_dir(path, which)
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(directory / 'state').item_metadata.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  state = checkpointer.restore(directory / 'state',
                               args=ocp.args.PyTreeRestore(restore_args=restore_args))
  description = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(directory / 'description')
  step = int(directory.name) if directory.name.isdigit() else -1
  return state['params'], description, step


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
