"""Training and evaluation (section 5 optimizer; top-1/top-5 error as defined in
section 2, the ten test patches of section 4.1).

    train_and_evaluate(config, workdir)

reads as big_vision-style sections: logging, mesh, input, model, optimizer,
update step, checkpoint, evaluation, loop. `train_step` and `eval_step` are
pure and jitted; a resumed run repeats the same randomness because the dropout
key is `fold_in(seed, step)` and the input stream is a function of the step.
Faults (README "Faults and resuming"): every checkpoint is saved only after its
losses and parameters are checked finite, evaluation steps are saved before
they evaluate, SIGTERM/SIGINT save and raise Preempted (main exits 75), and each
checkpoint carries the loop's bookkeeping, so the rerun continues exactly.
"""

import contextlib
import functools
import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from etils import epath

from alexnet_jax import augment
from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import config_checks
from alexnet_jax import input_pipeline
from alexnet_jax import models
from alexnet_jax import parallel
from alexnet_jax import resume_policy
from alexnet_jax import stats as stats_lib
from alexnet_jax import workdir_lock


class NonFiniteLossError(FloatingPointError):
  """Training produced a non-finite loss."""


# --------------------------------------------------------------------------
# Optimizer (section 5)
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# State and steps
# --------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  plateau: dict  # {'best', 'bad_evals', 'drops'}: the plateau schedule's record.


def total_steps(config, spe: int) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(math.ceil(config.num_epochs * spe))


def create_train_state(rng: jax.Array, model: nn.Module, tx: optax.GradientTransformation
                       ) -> TrainState:
  dummy = jnp.zeros((1,) + models.input_shape(model), jnp.float32)
  params = model.init(rng, dummy, train=False)['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params),
                    plateau={'best': jnp.asarray(np.inf, jnp.float32),
                             'bad_evals': jnp.zeros((), jnp.int32),
                             'drops': jnp.zeros((), jnp.int32)})


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy (the paper maximizes the multinomial log-likelihood)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def topk_errors(scores: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-example top-1 and top-5 error (0/1), as section 2 defines them."""
  top5 = jax.lax.top_k(scores, min(5, scores.shape[-1]))[1]
  hit = top5 == labels[:, None]
  return 1.0 - hit[:, 0].astype(jnp.float32), 1.0 - hit.any(-1).astype(jnp.float32)


def step_compiler_options() -> Optional[dict]:
  """XLA options for the jitted train and eval steps; None keeps XLA's defaults.

  On CPU, convolutions run on XLA's own kernels rather than YNNPACK's, whose
  weight gradients are 1.4-4x slower on AlexNet's layers (dots and reductions
  stay on YNNPACK), and copy insertion's region analysis avoids copying donated
  buffers. ~25% less CPU time per step (benchmarks/README.md).
  """
  if jax.default_backend() != 'cpu':
    return None
  return {'xla_cpu_experimental_ynn_fusion_type':
              'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE',
          'xla_cpu_copy_insertion_use_region_analysis': True}


def train_step(state: TrainState, batch: dict, stats: Optional[augment.Stats] = None, *,
               model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
               pixel_scale: float = 1.0) -> tuple[TrainState, dict]:
  """One SGD step on a global batch. Pure; the dropout key is fold_in(rng, step).

  With `stats`, batch is the input pipeline's uint8 batch, finished here by
  augment.train_images (section 4.1); without, batch['image'] is the input.
  """
  dropout_rng = jax.random.fold_in(rng, state.step)
  images = (batch['image'] if stats is None
            else augment.train_images(batch, stats, pixel_scale))  # (B, S, S, 3)

  def loss_fn(params):
    # 'health': each ReLU layer's firing fraction, from this same forward pass.
    logits, health = model.apply({'params': params}, images, train=True,
                                 rngs={'dropout': dropout_rng}, mutable=['health'])
    return cross_entropy(logits, batch['label']).mean(), (logits, health)

  (loss, (logits, health)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  lr = current_learning_rate(opt_state)  # The eps this update used.
  params = optax.apply_updates(state.params, updates)
  top1, top5 = topk_errors(logits, batch['label'])
  metrics = {
      'loss': loss, 'top1_error': top1.mean(), 'top5_error': top5.mean(),
      'learning_rate': lr,
      'l2_grads': optax.global_norm(grads), 'l2_params': optax.global_norm(params),
      'l2_updates': optax.global_norm(updates),
      **models.firing_metrics(health),   # firing_conv1 ... firing_fc7
  }
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def predict_probs(params: Any, images: jax.Array, *, model: nn.Module) -> jax.Array:
  """Class probabilities; for (B, 10, H, W, 3) inputs the softmax averaged over
  the ten patches, as in section 4.1 ("averaging the predictions ... on the ten patches")."""
  if images.ndim == 5:
    b, n = images.shape[:2]
    logits = model.apply({'params': params}, images.reshape((b * n,) + images.shape[2:]),
                         train=False)
    return jax.nn.softmax(logits).reshape(b, n, -1).mean(axis=1)
  return jax.nn.softmax(model.apply({'params': params}, images, train=False))


def eval_probs(params: Any, images: jax.Array, stats: Optional[augment.Stats] = None, *,
               model: nn.Module, num_crops: int = 1, pixel_scale: float = 1.0) -> jax.Array:
  """(b, K) class probabilities of evaluation inputs: with `stats`, the
  pipeline's uint8 images (preprocessing.eval_example), cut into `num_crops`
  patches and finished here (augment.eval_images); without, network inputs."""
  if stats is not None:
    images = augment.eval_images(images, stats, models.input_shape(model)[0], num_crops,
                                 pixel_scale)
  return predict_probs(params, images, model=model)


def eval_step(params: Any, batch: dict, stats: Optional[augment.Stats] = None, *,
              model: nn.Module, num_crops: int = 1, pixel_scale: float = 1.0) -> dict:
  """Sums over the real (mask=True) examples of a padded batch.

  With `stats`, batch['image'] is the pipeline's uint8 batch, cut into
  `num_crops` patches here (augment.eval_images); without, it is the input.
  """
  probs = eval_probs(params, batch['image'], stats, model=model, num_crops=num_crops,
                     pixel_scale=pixel_scale)
  mask = batch['mask'].astype(jnp.float32)
  p_label = jnp.take_along_axis(probs, batch['label'][:, None], axis=-1)[:, 0]
  loss = -jnp.log(jnp.maximum(p_label, 1e-30))
  top1, top5 = topk_errors(probs, batch['label'])
  return {'loss': (loss * mask).sum(), 'top1_error': (top1 * mask).sum(),
          'top5_error': (top5 * mask).sum(), 'count': mask.sum()}


# --------------------------------------------------------------------------
# Loop helpers
# --------------------------------------------------------------------------


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by a signal, checkpoint saved; rerun to resume.


class Preempted(Exception):
  """The run stopped on SIGTERM/SIGINT after saving a checkpoint (exit status
  PREEMPTED_EXIT_CODE from main); the same command resumes it."""

  def __init__(self, step: int, num_steps: int, state: Any = None):
    super().__init__(f'Preempted at step {step} of {num_steps}; checkpoint saved. Run the same '
                     'command to resume.')
    self.step, self.state = step, state


class EvaluationError(RuntimeError):
  """Evaluation failed; the checkpoint of its step is saved."""


class PreemptionFlag:
  """Set by SIGTERM (preemption) or SIGINT (Ctrl-C); the loop saves a
  checkpoint and stops. A second Ctrl-C aborts at once (KeyboardInterrupt)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.set = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def _handle(self, signum, frame):
    del frame
    if self.set and signum == signal.SIGINT:
      raise KeyboardInterrupt
    logging.warning('%s received: saving a checkpoint and stopping%s.',
                    signal.Signals(signum).name,
                    ' (Ctrl-C again aborts at once)' if signum == signal.SIGINT else '')
    self.set = True

  def __exit__(self, *exc):
    for s, previous in self._previous.items():
      signal.signal(s, previous)

  def any_host(self, step: int, every: int) -> bool:
    """Whether to stop now. One process: as soon as the signal came. Several:
    all must stop at the same step, so they agree every `every` steps (one
    all-gather then, instead of a host sync on every step)."""
    if jax.process_count() == 1:
      return self.set
    if step % every:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(multihost_utils.process_allgather(np.int32(self.set)).any())


def fault_point(event: str, step: int) -> None:
  """Test hook: ALEXNET_JAX_FAULT='EVENT@STEP[:SIGNAL]' sends SIGNAL (default
  KILL) to this process at that point of the loop. Events: 'trained' (after
  the update of STEP), 'saved' (save of STEP started; an async write is in
  flight), 'evaluated' (after STEP's evaluation and best/ save).
  tests/test_faults.py kills runs at chosen points with it."""
  spec = os.environ.get('ALEXNET_JAX_FAULT')
  if not spec:
    return
  where, _, sig = spec.partition(':')
  if where == f'{event}@{step}':
    os.kill(os.getpid(), getattr(signal, 'SIG' + (sig or 'KILL')))


def step_metrics(history: list, first_step: int) -> list[dict]:
  """Per-step train metrics as floats; raises NonFiniteLossError if a loss or
  the parameters after an update are not finite (before anything is saved)."""
  rows = [{k: float(v) for k, v in m.items()} for m in jax.device_get(history)]
  for i, m in enumerate(rows):
    if not (math.isfinite(m['loss']) and math.isfinite(m['l2_params'])):
      what = f'loss {m["loss"]}' if not math.isfinite(m['loss']) else 'parameters'
      error = NonFiniteLossError(
          f'Non-finite training {what} at step {first_step + i}; no checkpoint holds this '
          'state or the one it came from. Lower config.optimizer.learning_rate or check '
          'the input data, then rerun (the same workdir resumes from the last finite '
          'checkpoint; if that diverges again, use a new --workdir).')
      error.step = first_step + i
      raise error
  return rows


def _format_eta(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def evaluate(params: Any, config, *, eval_fn: Callable, sharding, ten_crop: bool) -> dict:
  """Top-1/top-5 error and loss over the whole eval split, each image once."""
  shard, num_shards = parallel.data_shard(sharding.mesh)
  batches = parallel.prefetch(input_pipeline.eval_iterator(
      config, batch_size=config.eval.batch_size // num_shards, ten_crop=ten_crop,
      process_index=shard, process_count=num_shards), sharding, config.dataset.prefetch)
  # Dispatched without waiting; fetched once at the end.
  sums = jax.device_get([eval_fn(params, batch) for batch in batches])
  count = float(sum(float(s['count']) for s in sums))
  if not count:
    raise ValueError(f'The evaluation split {config.dataset.eval_split!r} yielded no images '
                     '(none decoded, or it is empty).')
  totals = {k: sum(float(s[k]) for s in sums) for k in sums[0]}
  return {k: float(v) / count for k, v in totals.items() if k != 'count'} | {'count': count}


def input_statistics(config) -> augment.Stats:
  """The run's input statistics (mean image, PCA; stats.for_device), read from
  the training images where config asks for computed ones."""
  return stats_lib.for_device(config, functools.partial(input_pipeline.stats_images, config))


def init_params_from(config, fresh: Any) -> Any:
  """config.init_from's parameters, with the layers in config.init_reinit (e.g.
  fc8 for a new class count) kept at their fresh initialization."""
  try:
    loaded, _, step = ckpt_lib.load_params(config.init_from)
  except FileNotFoundError as e:  # Reported by main in one line, as a mismatch is.
    raise ckpt_lib.CheckpointMismatchError(f'config.init_from: {e}') from e
  reinit = tuple(config.get('init_reinit') or ())
  params = ckpt_lib.merge_params(jax.device_get(fresh), loaded, reinit, config.init_from)
  logging.info('Initialized from %s (step %d)%s.', config.init_from, step,
               f'; re-initialized {list(reinit)}' if reinit else '')
  return params


# --------------------------------------------------------------------------
# train_and_evaluate
# --------------------------------------------------------------------------


def _restore_or_init(config, ckpt, abstract_state, state_sharding, description,
                     init_fn) -> tuple[TrainState, dict]:
  """The newest readable checkpoint (its config checked against `config` by
  resume_policy) or a fresh state; with config's optimizer hyperparameters."""
  current = json.loads(config.to_json_best_effort())

  def check(saved_config):
    if saved_config is None:
      logging.warning('The checkpoint records no config; resuming without checking changes.')
      return
    for key, old, new in resume_policy.check_resume(saved_config, current, ckpt.latest.directory):
      logging.warning('Resuming with a changed config: %s: %r -> %r (applied from here on).',
                      key, old, new)

  state, progress = None, {}
  if ckpt.latest_step() is not None:
    state, progress = ckpt.restore_with_progress(jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state, state_sharding), description, check=check)
  if state is None:
    state = init_fn()
    if config.get('init_from'):  # Fine-tune: another run's parameters (not its optimizer).
      state = state.replace(params=init_params_from(config, state.params))
  opt_state = apply_config_to_opt_state(state.opt_state, config, int(state.plateau['drops']))
  return jax.device_put(state.replace(opt_state=opt_state), state_sharding), progress


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  Writes TensorBoard events, config.json (once the resume check passed) and,
  at the end, final_metrics.json. Returns the final train state; raises
  Preempted after SIGTERM/SIGINT (checkpoint saved).
  """
  config_checks.check(config, num_devices=jax.device_count())  # Before the workdir.
  t_start = time.time()
  workdir = epath.Path(workdir)  # A local path or a bucket (gs://...).
  if '://' not in str(workdir):
    workdir = workdir.absolute()
  is_main = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lock.WorkdirLock(workdir, enabled=is_main) as lock:
    return _train_locked(config, workdir, lock, t_start)


def _train_locked(config, workdir, lock, t_start) -> TrainState:
  # ---------------------------------------------------------------- logging
  is_main = jax.process_index() == 0
  # TensorBoard only: the loop logs one console line per event itself.
  writer = metric_writers.AsyncMultiWriter(
      [metric_writers.SummaryWriter(str(workdir))] if is_main else [])

  # ------------------------------------------------------------------ mesh
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch_size(config.batch_size, mesh, 'batch_size')
  parallel.check_batch_size(config.eval.batch_size, mesh, 'eval.batch_size')
  data_sharding = parallel.batch_sharding(mesh)
  # This process feeds shard `shard` of `num_shards` of every global batch.
  shard, num_shards = parallel.data_shard(mesh)

  # ----------------------------------------------------------------- input
  info = input_pipeline.dataset_info(config)
  config_checks.raise_any(config_checks.dataset_problems(config, info))
  # The same epoch length as the input stream's (it drops each pass's remainder).
  spe = input_pipeline.steps_per_epoch(info.num_train, config.batch_size)
  num_steps = total_steps(config, spe)
  eval_every = max(1, int(round(config.eval.every_epochs * spe)))

  # Section 2 / 4.1 statistics (mean image, PCA), resolved once per run and
  # passed to the jitted steps, which finish the preprocessing on the device.
  input_stats = input_statistics(config)
  stats_sharding = augment.stats_shardings(parallel.replicated(mesh))
  input_stats = jax.tree.map(
      lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i]),
      input_stats, stats_sharding)
  pixel_scale = float(config.input.pixel_scale)

  # ----------------------------------------------------------------- model
  # Section 3.2: one tower per device on the mesh's 'model' axis (if > 1).
  model = parallel.split_towers(models.create_model(config.model), mesh)
  tx = make_optimizer(config, spe)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, dropout_rng = jax.random.split(rng)
  abstract_state = jax.eval_shape(functools.partial(create_train_state, model=model, tx=tx),
                                  init_rng)
  state_sharding = parallel.state_shardings(mesh, abstract_state)
  description = ckpt_lib.describe(config, abstract_state.params)

  # ----------------------------------------------------------- update step
  jit_train_step = jax.jit(
      functools.partial(train_step, model=model, tx=tx, rng=dropout_rng,
                        pixel_scale=pixel_scale),
      in_shardings=(state_sharding, data_sharding, stats_sharding),
      out_shardings=(state_sharding, parallel.replicated(mesh)),
      donate_argnums=0, compiler_options=step_compiler_options())
  p_train_step = lambda state, batch: jit_train_step(state, batch, input_stats)

  def jit_eval_step(num_crops):
    step = jax.jit(functools.partial(eval_step, model=model, num_crops=num_crops,
                                     pixel_scale=pixel_scale),
                   in_shardings=(state_sharding.params, data_sharding, stats_sharding),
                   out_shardings=parallel.replicated(mesh),
                   compiler_options=step_compiler_options())
    return lambda params, batch: step(params, batch, input_stats)
  # Centre crop, and the paper's ten patches (five without reflections).
  p_eval_steps = {False: jit_eval_step(1),
                  True: jit_eval_step(augment.num_eval_crops(config.input.flip))}

  # ------------------------------------------------------------ checkpoint
  ckpt = ckpt_lib.Checkpointer(str(workdir), every_steps=config.checkpoint_every_steps,
                               keep=config.keep_checkpoints,
                               use_async=config.async_checkpoints)
  state, progress = _restore_or_init(
      config, ckpt, abstract_state, state_sharding, description,
      lambda: jax.jit(functools.partial(create_train_state, model=model, tx=tx),
                      out_shardings=state_sharding)(init_rng))
  start_step = int(state.step)
  if is_main:  # Only now: a refused resume leaves the run's record as it was.
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
    # For predict and figures: the names of the class ids.
    (workdir / 'class_names.json').write_text(json.dumps(list(info.class_names)))
    n_params = sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))
    logging.info('Model %s: %s parameters; %d steps (%d per epoch, %.1f epochs), '
                 'global batch %d on mesh %s; %s at step %d.', config.model.name,
                 f'{n_params:,}', num_steps, spe, num_steps / spe, config.batch_size,
                 dict(mesh.shape), 'resuming' if start_step else 'starting', start_step)

  # ------------------------------------------------------------ evaluation
  def run_evals(state, step):
    results = {}
    crops = [('eval', False)] + ([('eval_multicrop', True)] if config.eval.ten_crop else [])
    for prefix, ten in crops:
      t0 = time.time()
      m = evaluate(state.params, config, eval_fn=p_eval_steps[ten], sharding=data_sharding,
                   ten_crop=ten)
      results.update({f'{prefix}_{k}': v for k, v in m.items() if k != 'count'})
      logging.info('step %d %s (%d images, %.1fs): loss %.4f, top-1 error %.2f%%, '
                   'top-5 error %.2f%%', step,
                   ('10-crop' if config.input.flip else '5-crop (no reflections)') if ten
                   else 'centre crop',
                   m['count'], time.time() - t0, m['loss'], 100 * m['top1_error'],
                   100 * m['top5_error'])
    writer.write_scalars(step, results)
    return results

  def evaluate_and_update(state, step):
    """Evaluation at `step` (its checkpoint is already saved), the plateau
    schedule's update, and the offer to best/."""
    try:
      results = run_evals(state, step)
    except Exception as e:
      raise EvaluationError(
          f'Evaluation at step {step} failed ({type(e).__name__}: {e}). The checkpoint of '
          f'step {step} is saved in {ckpt.latest.directory}; fix the cause (config.eval.*, '
          'config.dataset.eval_split) and rerun the same command: it resumes with this '
          'evaluation.') from e
    if config.schedule.name == 'plateau' and step < num_steps:
      plateau, drop = plateau_update(jax.device_get(state.plateau),
                                     results['eval_top1_error'], config.schedule)
      opt_state = set_lr_scale(state.opt_state, plateau_scale(config, plateau['drops']))
      if drop:
        logging.info('Validation error stopped improving: learning rate divided by %g '
                     '(drop %d of %d).', 1 / config.schedule.factor, int(plateau['drops']),
                     config.schedule.max_drops)
      state = jax.device_put(state.replace(plateau=plateau, opt_state=opt_state),
                             state_sharding)
    ckpt.save_best(step, state, description, {'top1_error': results['eval_top1_error']})
    lock.refresh()
    fault_point('evaluated', step)
    return state, results

  # ------------------------------------------------------------------ loop
  # The bookkeeping saved with every checkpoint (`progress`), so that a resumed
  # run logs, evaluates and totals exactly as an uninterrupted one.
  wall_offset = float(progress.get('wall_time_s', 0.0))
  window = list(progress.get('window', []))        # per-step metrics since the last log
  train_metrics = dict(progress.get('train_metrics', {}))   # the last logged window
  evaluated_step = int(progress.get('evaluated_step', start_step))

  def progress_record():
    return {'wall_time_s': wall_offset + time.time() - t_start, 'window': window,
            'train_metrics': train_metrics, 'evaluated_step': evaluated_step}

  try:
    last_eval = {}
    if evaluated_step < start_step and (start_step % eval_every == 0 or start_step == num_steps):
      # Stopped after saving an evaluation step but before its evaluation finished.
      state, last_eval = evaluate_and_update(state, start_step)
      evaluated_step = start_step

    train_iter = parallel.prefetch(input_pipeline.train_iterator(
        config, batch_size=config.batch_size // num_shards, start_step=start_step,
        process_index=shard, process_count=num_shards), data_sharding, config.dataset.prefetch)
    history = []
    t_log, steps_since_log = time.time(), 0
    with PreemptionFlag() as preempted:
      for step in range(start_step + 1, num_steps + 1):
        batch = next(train_iter)
        state, metrics = p_train_step(state, batch)
        history.append(metrics)
        steps_since_log += 1
        fault_point('trained', step)
        ckpt.check_writes()  # A failed async save stops the run now, not a save later.

        is_log = step % config.log_every_steps == 0 or step == num_steps
        is_eval = step % eval_every == 0 or step == num_steps
        stop = preempted.any_host(step, config.log_every_steps)
        # Evaluation steps are saved first, so a failed or killed evaluation loses nothing.
        is_save = is_eval or stop or ckpt.should_save(step)  # is_eval: also the last step
        if is_log or is_save:  # Checks finiteness before anything is saved.
          window += step_metrics(history, step - len(history) + 1)
          history = []

        if is_log:
          train_metrics = {f'train_{k}': float(np.mean([m[k] for m in window]))
                           for k in window[0]}
          elapsed = time.time() - t_log
          rate = steps_since_log * config.batch_size / max(elapsed, 1e-9)
          train_metrics['train_images_per_second'] = rate
          writer.write_scalars(step, train_metrics)
          eta = (num_steps - step) * config.batch_size / max(rate, 1e-9)
          logging.info(
              'step %d/%d (epoch %.2f, %.1f%%) | loss %.4f | top-1 err %.1f%% | top-5 err %.1f%% '
              '| lr %.2g | %.0f img/s | ETA %s', step, num_steps, step / spe, 100 * step / num_steps,
              train_metrics['train_loss'], 100 * train_metrics['train_top1_error'],
              100 * train_metrics['train_top5_error'], train_metrics['train_learning_rate'],
              rate, _format_eta(eta))
          window, steps_since_log, t_log = [], 0, time.time()
          lock.refresh()

        if is_save:
          ckpt.save(step, state, description, progress_record(), force=True)
          fault_point('saved', step)
        if is_eval and not stop:  # Stopping: the resumed run evaluates this step.
          state, last_eval = evaluate_and_update(state, step)
          evaluated_step = step
          t_log = time.time()
        if stop:
          ckpt.close()
          writer.flush()
          logging.warning('Preempted at step %d of %d; checkpoint saved. Run the same '
                          'command to resume.', step, num_steps)
          raise Preempted(step, num_steps, state)

    if not last_eval:  # Resumed a run that had already finished.
      last_eval = run_evals(state, int(state.step))
    ckpt.close()
    writer.flush()
    final = {'step': int(state.step), 'wall_time_s': progress_record()['wall_time_s'],
             **train_metrics,
             'eval_top1_error': last_eval.get('eval_top1_error'),
             'eval_top5_error': last_eval.get('eval_top5_error'),
             'eval_loss': last_eval.get('eval_loss'),
             'eval_multicrop_top1_error': last_eval.get('eval_multicrop_top1_error'),
             'eval_multicrop_top5_error': last_eval.get('eval_multicrop_top5_error'),
             'eval_multicrop_crops': (augment.num_eval_crops(config.input.flip)
                                      if config.eval.ten_crop else None)}
  except Exception as e:  # Let in-flight saves commit; the error says what to do.
    with contextlib.suppress(Exception):
      ckpt.close()
      writer.flush()
    if isinstance(e, NonFiniteLossError):  # The state before the bad step led to it.
      ckpt.put_aside_from(e.step - 1, 'diverged')
    raise
  if is_main:
    (workdir / 'final_metrics.json').write_text(json.dumps(final, indent=2))
  logging.info('Done: %s', json.dumps(final))
  return state
