"""The optimizer of section 5 as optax transformations, and its schedules.

    hyper, schedule = Hyper(**config.optimizer), Schedule(**config.schedule)
    tx = make_optimizer(hyper, schedule, steps_per_epoch, total_steps)

The update rule (`paper_momentum`), which parameters decay (`decay_mask`), the
step-indexed schedules (`learning_rate_schedule`) and the plateau schedule
("divide the learning rate by 10 when the validation error rate stopped
improving", section 5), whose divisions live in the optimizer state as the
`lr_scale` hyperparameter (`plateau_update`, `set_lr_scale`). `Hyper` and
`Schedule` mirror config.optimizer and config.schedule field for field, so a
new key there is a new field here (and nowhere else). Pure functions; no
training loop here.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

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
  """Which parameters get weight decay: 'all' (section 5's rule read for every
  w) or 'kernels' (Caffe's bvlc_alexnet: biases undecayed)."""
  if which == 'all':
    return jax.tree.map(lambda _: True, params)
  if which == 'kernels':
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params)
  raise ValueError(f"config.optimizer.weight_decay_on must be 'all' or 'kernels', got {which!r}.")


OPTIMIZER_RULES = {'paper': paper_momentum, 'trace_then_scale': trace_then_scale}
WEIGHT_DECAY_ON = ('all', 'kernels')   # config.optimizer.weight_decay_on
SCHEDULES = ('plateau', 'step', 'cosine', 'constant')   # config.schedule.name
# config.eval.select_on: the validation metric the plateau and best/ follow:
# the centre crop's or the multi-crop (ten patches, section 4.1) top-1 error.
SELECT_ON = ('eval_top1_error', 'eval_multicrop_top1_error')


@dataclasses.dataclass(frozen=True)
class Hyper:
  """config.optimizer: section 5's update rule and its hyperparameters."""
  learning_rate: float   # eps, "initialized at 0.01"
  momentum: float        # 0.9
  weight_decay: float    # 0.0005
  weight_decay_on: str   # WEIGHT_DECAY_ON
  rule: str              # OPTIMIZER_RULES


@dataclasses.dataclass(frozen=True)
class Schedule:
  """config.schedule: how eps changes (section 5: divided by 10 on a plateau)."""
  name: str              # SCHEDULES
  factor: float          # eps multiplier per drop / step
  patience: int          # plateau: evaluations without improvement before a drop
  min_delta: float       # plateau: improvement in top-1 error that resets patience
  max_drops: int         # plateau: "reduced three times prior to termination"
  step_epochs: Sequence[float]  # step: the epochs of the drops
  warmup_epochs: float   # linear warmup from 0 (0: none)


def total_steps(num_train_steps: int, num_epochs: float, spe: int) -> int:
  """The run's length: num_train_steps if > 0, else num_epochs passes of spe steps."""
  if num_train_steps > 0:
    return int(num_train_steps)
  return int(math.ceil(num_epochs * spe))


def learning_rate_schedule(hyper: Hyper, s: Schedule, steps_per_epoch: int,
                           num_steps: int) -> Callable:
  """eps as a function of the step (before the plateau factor).

  The plateau schedule ("divide by 10 when the validation error stops
  improving", section 5) depends on measured validation error, so it is not a
  function of the step: its divisions live in the optimizer state as the
  `lr_scale` hyperparameter (`set_lr_scale`), and eps = schedule(step) * lr_scale,
  so they compose with a warmup.
  """
  base = hyper.learning_rate
  warmup = int(round(s.warmup_epochs * steps_per_epoch))
  if s.name in ('plateau', 'constant'):
    fn = optax.constant_schedule(base)
  elif s.name == 'step':
    fn = optax.piecewise_constant_schedule(
        base, {int(round(e * steps_per_epoch)) - warmup: s.factor for e in s.step_epochs})
  elif s.name == 'cosine':
    fn = optax.cosine_decay_schedule(base, max(1, num_steps - warmup))
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


def make_optimizer(o: Hyper, schedule: Schedule, steps_per_epoch: int,
                   num_steps: int) -> optax.GradientTransformation:
  """The optimizer of `o` and `schedule` as an optax chain (num_steps: the
  run's length, `total_steps`, which the cosine schedule spans).

  The hyperparameters live in the optimizer state (`inject_hyperparams`):
  `learning_rate` is the step schedule's value, `lr_scale` the plateau
  schedule's factor (1 otherwise); checkpoints carry both.
  """
  if o.rule not in OPTIMIZER_RULES:
    raise ValueError(f'config.optimizer.rule must be one of {sorted(OPTIMIZER_RULES)}, '
                     f'got {o.rule!r}.')
  if o.weight_decay_on not in WEIGHT_DECAY_ON:
    raise ValueError("config.optimizer.weight_decay_on must be 'all' or 'kernels', "
                     f'got {o.weight_decay_on!r}.')
  mask = None if o.weight_decay_on == 'all' else functools.partial(decay_mask, which='kernels')
  return optax.inject_hyperparams(_scaled(OPTIMIZER_RULES[o.rule]), static_args=('mask',))(
      learning_rate=learning_rate_schedule(o, schedule, steps_per_epoch, num_steps), lr_scale=1.0,
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


def plateau_scale(s: Schedule, drops: int) -> float:
  """The plateau schedule's factor after `drops` divisions (1 for other schedules)."""
  return float(s.factor) ** int(drops) if s.name == 'plateau' else 1.0


def apply_hyperparams(opt_state: Any, hyper: Hyper, s: Schedule, drops: int) -> Any:
  """Writes `hyper`'s momentum and weight decay and the plateau factor into a
  (restored) optimizer state, so a resumed run uses what its config says."""
  return _set_hyperparams(opt_state, momentum=hyper.momentum,
                          weight_decay=hyper.weight_decay, lr_scale=plateau_scale(s, drops))


def plateau_update(plateau: dict, top1_error: float, s: Schedule) -> tuple[dict, bool]:
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

