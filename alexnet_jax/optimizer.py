"""The optimizer of section 5 as optax transformations, and its schedules.

    tx = make_optimizer(config, steps_per_epoch)

The update rule (`paper_momentum`), which parameters decay (`decay_mask`), the
step-indexed schedules (`learning_rate_schedule`) and the plateau schedule
("divide the learning rate by 10 when the validation error rate stopped
improving", section 5), whose divisions live in the optimizer state as the
`lr_scale` hyperparameter (`plateau_update`, `set_lr_scale`). Pure functions of
the config; no training loop here.
"""

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

def paper_momentum(learning_rate, momentum: float, weight_decay: float,
                   mask: Any = None) -> optax.GradientTransformation:
  """The paper's rule, with eps applied before the momentum trace:

      v <- momentum * v - weight_decay * eps * w - eps * dL/dw
      w <- w + v

  When eps changes over time this differs from optax.sgd's "trace, then
  scale" (v <- m v + g; w <- w - eps v), where a new eps rescales the whole
  accumulated velocity at once.
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask),   # g + wd * w
      optax.scale_by_learning_rate(learning_rate),     # -eps * (g + wd * w)
      optax.trace(decay=momentum))                     # v <- m v - eps (...)


def trace_then_scale(learning_rate, momentum: float, weight_decay: float,
                     mask: Any = None) -> optax.GradientTransformation:
  """optax.sgd's order: v <- m v + (g + wd w); w <- w - eps v."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask),
      optax.trace(decay=momentum),
      optax.scale_by_learning_rate(learning_rate))


def decay_mask(params: Any, which: str) -> Any:
  """Which parameters get weight decay: 'all' (paper) or 'kernels' (Caffe)."""
  if which == 'all':
    return jax.tree.map(lambda _: True, params)
  if which == 'kernels':
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)
  raise ValueError(f"config.optimizer.weight_decay_on must be 'all' or 'kernels', got {which!r}.")


OPTIMIZER_RULES = {'paper': paper_momentum, 'trace_then_scale': trace_then_scale}
WEIGHT_DECAY_ON = ('all', 'kernels')   # config.optimizer.weight_decay_on
SCHEDULES = ('plateau', 'step', 'cosine', 'constant')   # config.schedule.name


def total_steps(config, spe: int) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(math.ceil(config.num_epochs * spe))



def learning_rate_schedule(config, steps_per_epoch: int) -> Callable:
  """eps as a function of the step (before the plateau factor).

  The plateau schedule ("divide by 10 when the validation error stops
  improving", section 5) depends on measured validation error, so it is not a
  function of the step: its divisions live in the optimizer state as the
  `lr_scale` hyperparameter (`set_lr_scale`), and eps = schedule(step) * lr_scale,
  so they compose with a warmup.
  """
  s, base = config.schedule, config.optimizer.learning_rate
  warmup = int(round(s.warmup_epochs * steps_per_epoch))
  total = total_steps(config, steps_per_epoch)
  if s.name in ('plateau', 'constant'):
    fn = optax.constant_schedule(base)
  elif s.name == 'step':
    fn = optax.piecewise_constant_schedule(
        base, {int(round(e * steps_per_epoch)) - warmup: s.factor for e in s.step_epochs})
  elif s.name == 'cosine':
    fn = optax.cosine_decay_schedule(base, max(1, total - warmup))
  else:
    raise ValueError(f'Unknown config.schedule.name {s.name!r}; use one of {SCHEDULES}.')
  if warmup:
    fn = optax.join_schedules([optax.linear_schedule(0.0, base, warmup), fn], [warmup])
  return fn


def _scaled(rule: Callable) -> Callable:
  """`rule` with eps = learning_rate * lr_scale (lr_scale: the plateau factor)."""
  def scaled_rule(learning_rate, lr_scale, momentum, weight_decay, mask=None):
    return rule(learning_rate * lr_scale, momentum, weight_decay, mask)
  return scaled_rule


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """The optimizer of config.optimizer / config.schedule as an optax chain.

  The hyperparameters live in the optimizer state (`inject_hyperparams`):
  `learning_rate` is the step schedule's value, `lr_scale` the plateau
  schedule's factor (1 otherwise); checkpoints carry both.
  """
  o = config.optimizer
  if o.rule not in OPTIMIZER_RULES:
    raise ValueError(f'config.optimizer.rule must be one of {sorted(OPTIMIZER_RULES)}, '
                     f'got {o.rule!r}.')
  if o.weight_decay_on not in WEIGHT_DECAY_ON:
    raise ValueError("config.optimizer.weight_decay_on must be 'all' or 'kernels', "
                     f'got {o.weight_decay_on!r}.')
  mask = None if o.weight_decay_on == 'all' else functools.partial(decay_mask, which='kernels')
  return optax.inject_hyperparams(_scaled(OPTIMIZER_RULES[o.rule]), static_args=('mask',))(
      learning_rate=learning_rate_schedule(config, steps_per_epoch), lr_scale=1.0,
      momentum=o.momentum, weight_decay=o.weight_decay, mask=mask)


def current_learning_rate(opt_state: Any) -> jax.Array:
  """eps of the last update (inject_hyperparams stores the values it used)."""
  hp = opt_state.hyperparams
  return hp['learning_rate'] * hp['lr_scale']


def _set_hyperparams(opt_state: Any, **values) -> Any:
  hp = dict(opt_state.hyperparams)
  for k, v in values.items():
    hp[k] = jnp.asarray(v, hp[k].dtype)
  return opt_state._replace(hyperparams=hp)


def set_lr_scale(opt_state: Any, value: float) -> Any:
  return _set_hyperparams(opt_state, lr_scale=value)


def plateau_scale(config, drops: int) -> float:
  """The plateau schedule's factor after `drops` divisions (1 for other schedules)."""
  return float(config.schedule.factor) ** int(drops) if config.schedule.name == 'plateau' else 1.0


def apply_config_to_opt_state(opt_state: Any, config, drops: int) -> Any:
  """Writes config's momentum, weight decay and plateau factor into a
  (restored) optimizer state, so a resumed run uses what its config says."""
  return _set_hyperparams(opt_state, momentum=config.optimizer.momentum,
                          weight_decay=config.optimizer.weight_decay,
                          lr_scale=plateau_scale(config, drops))


def plateau_update(plateau: dict, top1_error: float, s) -> tuple[dict, bool]:
  """One validation result -> new plateau record and whether to divide eps.

  Section 5: eps is divided by 10 "when the validation error rate stopped
  improving with the current learning rate", at most `s.max_drops` times.
  """
  best, bad, drops = float(plateau['best']), int(plateau['bad_evals']), int(plateau['drops'])
  top1_error = float(np.float32(top1_error))  # `best` is stored as float32.
  if top1_error < best - s.min_delta:
    best, bad = top1_error, 0
  else:
    bad += 1
  drop = bad >= s.patience and drops < s.max_drops
  if drop:
    drops, bad, best = drops + 1, 0, min(best, top1_error)
  return {'best': np.float32(best), 'bad_evals': np.int32(bad),
          'drops': np.int32(drops)}, drop

