"""What a resumed run may change: one table, applied when a checkpoint is restored.

A run resumed with a different config either honours each change (and logs it)
or refuses before anything is written. Keys are dotted config paths; a rule
for a prefix covers every key under it; the longest matching prefix wins;
keys matching no rule are refused (an unknown key is not known to be safe).

  'apply':  takes effect from the resumed step on. Optimizer hyperparameters
            are written into the restored optimizer state
            (optimizer.apply_hyperparams); the learning rate follows the
            new schedule (a function of the step, times the plateau factor).
  'refuse': the checkpoint's trajectory cannot continue under the new value
            (a different model, update rule, input stream or random seed).
"""

from typing import Any

from alexnet_jax import checkpoint as ckpt_lib

RULES = {
    # Run length, logging, checkpointing, evaluation, where the data lives.
    'num_epochs': 'apply',
    'num_train_steps': 'apply',
    'log_every_steps': 'apply',
    'checkpoint_every_steps': 'apply',
    'keep_checkpoints': 'apply',
    'async_checkpoints': 'apply',
    'watchdog_minutes': 'apply',
    'eval': 'apply',
    'dataset.data_dir': 'apply',
    'dataset.manual_dir': 'apply',
    'dataset.folder': 'apply',
    'dataset.download': 'apply',
    'dataset.prefetch': 'apply',
    'dataset.threads': 'apply',
    'dataset.cache': 'apply',
    'dataset.eval_split': 'apply',
    'dataset.prepared_dir': 'apply',  # where the prepared copy lives (alexnet_jax.prepare)
    'mesh': 'apply',                 # a requeued job may land on other hardware
    'init_from': 'apply',            # only read when there is no checkpoint
    'init_reinit': 'apply',          # likewise
    # Optimizer hyperparameters: written into the restored state.
    'optimizer.learning_rate': 'apply',
    'optimizer.momentum': 'apply',
    'optimizer.weight_decay': 'apply',
    'schedule': 'apply',             # factor, patience, step_epochs, warmup_epochs, ...
    # The trajectory itself.
    'schedule.name': 'refuse',
    'optimizer.rule': 'refuse',
    'optimizer.weight_decay_on': 'refuse',
    'model': 'refuse',
    'batch_size': 'refuse',
    'seed': 'refuse',
    'input': 'refuse',
    'dataset': 'refuse',             # source, name, train split, keys, shuffle buffer
}


class ResumeRefusedError(ckpt_lib.CheckpointMismatchError):
  """The config changes something a resumed run cannot honour."""


def _flatten(tree: Any, prefix: str = '') -> dict:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f'{prefix}{k}.'))
    return out
  return {prefix[:-1]: tree}


def _norm(v):
  """JSON round trip: tuples and lists compare equal."""
  return [_norm(x) for x in v] if isinstance(v, (list, tuple)) else v


def rule(key: str) -> str:
  parts = key.split('.')
  for n in range(len(parts), 0, -1):
    r = RULES.get('.'.join(parts[:n]))
    if r is not None:
      return r
  return 'refuse'


def changes(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
  """(key, checkpoint value, config value) for every key that differs. Keys the
  checkpoint's config lacks (added to the code since) are not changes."""
  a, b = _flatten(saved), _flatten(current)
  return [(k, a[k], b.get(k)) for k in sorted(a) if _norm(a[k]) != _norm(b.get(k))]


def check_resume(saved: dict, current: dict, where: Any) -> list[tuple[str, Any, Any]]:
  """Raises ResumeRefusedError with the diff if any change is refused; returns
  the applied changes (for the log)."""
  diff = changes(saved, current)
  refused = [d for d in diff if rule(d[0]) == 'refuse']
  if refused:
    raise ResumeRefusedError(
        f'The checkpoint in {where} was written with a config this run cannot continue:\n' +
        '\n'.join(f'  {k}: checkpoint {a!r} vs config {b!r}' for k, a, b in refused) +
        '\nRerun with the checkpoint\'s values for these keys, or use a new --workdir.')
  return diff
