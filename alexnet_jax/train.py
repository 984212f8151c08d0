"""Training and evaluation (section 5 optimizer; top-1/top-5 error as defined in
section 2, the ten test patches of section 4.1).

    train_and_evaluate(config, workdir)

reads as big_vision-style sections: logging, mesh, input, model, optimizer,
update step, checkpoint, evaluation, loop. `train_step` and `eval_step` are
pure and jitted; a resumed run repeats the same randomness because the dropout
key is `fold_in(seed, step)` and the input stream is a function of the step.
"""

import functools
import json
import math
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

from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import input_pipeline
from alexnet_jax import models
from alexnet_jax import parallel


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


def learning_rate_schedule(config, steps_per_epoch: int) -> Any:
  """eps as a function of the step, or a constant for the 'plateau' schedule.

  The plateau schedule ("divide by 10 when the validation error stops
  improving", section 5) depends on measured validation error, so it is not a
  function of the step: the loop changes eps between steps (`plateau_update`).
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
    raise ValueError(f"Unknown config.schedule.name {s.name!r}; use 'plateau', 'step', "
                     "'cosine' or 'constant'.")
  if warmup:
    fn = optax.join_schedules([optax.linear_schedule(0.0, base, warmup), fn], [warmup])
  if s.name == 'plateau' and not warmup:
    return base
  return fn


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """The optimizer of config.optimizer / config.schedule as an optax chain.

  The learning rate lives in the optimizer state (`inject_hyperparams`), so
  the plateau schedule can change it and checkpoints carry it.
  """
  o = config.optimizer
  rules = {'paper': paper_momentum, 'trace_then_scale': trace_then_scale}
  if o.rule not in rules:
    raise ValueError(f"config.optimizer.rule must be one of {sorted(rules)}, got {o.rule!r}.")
  if o.weight_decay_on not in ('all', 'kernels'):
    raise ValueError("config.optimizer.weight_decay_on must be 'all' or 'kernels', "
                     f'got {o.weight_decay_on!r}.')
  mask = None if o.weight_decay_on == 'all' else functools.partial(decay_mask, which='kernels')
  return optax.inject_hyperparams(rules[o.rule], static_args=('mask',))(
      learning_rate=learning_rate_schedule(config, steps_per_epoch),
      momentum=o.momentum, weight_decay=o.weight_decay, mask=mask)


def current_learning_rate(opt_state: Any) -> jax.Array:
  return opt_state.hyperparams['learning_rate']


def set_learning_rate(opt_state: Any, value: float) -> Any:
  hp = dict(opt_state.hyperparams)
  hp['learning_rate'] = jnp.asarray(value, hp['learning_rate'].dtype)
  return opt_state._replace(hyperparams=hp)


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


def train_step(state: TrainState, batch: dict, *, model: nn.Module,
               tx: optax.GradientTransformation, rng: jax.Array
               ) -> tuple[TrainState, dict]:
  """One SGD step on a global batch. Pure; the dropout key is fold_in(rng, step)."""
  dropout_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    logits = model.apply({'params': params}, batch['image'], train=True,
                         rngs={'dropout': dropout_rng})
    return cross_entropy(logits, batch['label']).mean(), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  lr = current_learning_rate(state.opt_state)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  top1, top5 = topk_errors(logits, batch['label'])
  metrics = {
      'loss': loss, 'top1_error': top1.mean(), 'top5_error': top5.mean(),
      'learning_rate': lr,
      'l2_grads': optax.global_norm(grads), 'l2_params': optax.global_norm(params),
      'l2_updates': optax.global_norm(updates),
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


def eval_step(params: Any, batch: dict, *, model: nn.Module) -> dict:
  """Sums over the real (mask=True) examples of a padded batch."""
  probs = predict_probs(params, batch['image'], model=model)
  mask = batch['mask'].astype(jnp.float32)
  p_label = jnp.take_along_axis(probs, batch['label'][:, None], axis=-1)[:, 0]
  loss = -jnp.log(jnp.maximum(p_label, 1e-30))
  top1, top5 = topk_errors(probs, batch['label'])
  return {'loss': (loss * mask).sum(), 'top1_error': (top1 * mask).sum(),
          'top5_error': (top5 * mask).sum(), 'count': mask.sum()}


# --------------------------------------------------------------------------
# Loop helpers
# --------------------------------------------------------------------------


class PreemptionFlag:
  """Set by SIGTERM (preemption); the loop saves a checkpoint and returns."""

  def __init__(self):
    self.set = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint and stopping.')
    self.set = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

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


def _format_eta(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def evaluate(params: Any, config, *, eval_fn: Callable, sharding, ten_crop: bool) -> dict:
  """Top-1/top-5 error and loss over the whole eval split, each image once."""
  shard, num_shards = parallel.data_shard(sharding.mesh)
  totals = None
  for batch in input_pipeline.eval_iterator(
      config, batch_size=config.eval.batch_size // num_shards, ten_crop=ten_crop,
      process_index=shard, process_count=num_shards):
    sums = eval_fn(params, parallel.global_batch(batch, sharding))
    sums = jax.device_get(sums)
    totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
  count = float(totals['count'])
  return {k: float(v) / count for k, v in totals.items() if k != 'count'} | {'count': count}


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  Writes TensorBoard events, config.json and, at the end, final_metrics.json.
  Returns the final train state.
  """
  # ---------------------------------------------------------------- logging
  workdir = epath.Path(workdir)  # A local path or a bucket (gs://...).
  if '://' not in str(workdir):
    workdir = workdir.absolute()
  is_main = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)
  writer = metric_writers.create_default_writer(
      str(workdir), just_logging=not is_main, asynchronous=True)
  if is_main:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))

  # ------------------------------------------------------------------ mesh
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch_size(config.batch_size, mesh, 'batch_size')
  parallel.check_batch_size(config.eval.batch_size, mesh, 'eval.batch_size')
  data_sharding = parallel.batch_sharding(mesh)
  # This process feeds shard `shard` of `num_shards` of every global batch.
  shard, num_shards = parallel.data_shard(mesh)

  # ----------------------------------------------------------------- input
  info = input_pipeline.dataset_info(config)
  if info.num_classes != config.model.num_classes:
    raise ValueError(f'The dataset has {info.num_classes} classes but '
                     f'config.model.num_classes={config.model.num_classes}.')
  if is_main:  # For predict and figures: the names of the class ids.
    (workdir / 'class_names.json').write_text(json.dumps(input_pipeline.class_names(config)))
  # The same epoch length as the input stream's (it drops each pass's remainder).
  spe = input_pipeline.steps_per_epoch(info.num_train, config.batch_size)
  num_steps = total_steps(config, spe)
  eval_every = max(1, int(round(config.eval.every_epochs * spe)))

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
  p_train_step = jax.jit(
      functools.partial(train_step, model=model, tx=tx, rng=dropout_rng),
      in_shardings=(state_sharding, data_sharding),
      out_shardings=(state_sharding, parallel.replicated(mesh)),
      donate_argnums=0, compiler_options=step_compiler_options())
  p_eval_step = jax.jit(functools.partial(eval_step, model=model),
                        in_shardings=(state_sharding.params, data_sharding),
                        out_shardings=parallel.replicated(mesh),
                        compiler_options=step_compiler_options())

  # ------------------------------------------------------------ checkpoint
  ckpt = ckpt_lib.Checkpointer(str(workdir), every_steps=config.checkpoint_every_steps,
                               keep=config.keep_checkpoints,
                               use_async=config.async_checkpoints)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state, state_sharding), description)
  else:
    state = jax.jit(functools.partial(create_train_state, model=model, tx=tx),
                    out_shardings=state_sharding)(init_rng)
    if config.get('init_from'):  # Fine-tune: another run's parameters (not its optimizer).
      state = jax.device_put(state.replace(params=init_params_from(config, state.params)),
                             state_sharding)
  start_step = int(state.step)
  if is_main:
    n_params = sum(np.prod(x.shape) for x in jax.tree.leaves(state.params))
    logging.info('Model %s: %s parameters; %d steps (%d per epoch, %.1f epochs), '
                 'global batch %d on mesh %s; %s at step %d.', config.model.name,
                 f'{n_params:,}', num_steps, spe, num_steps / spe, config.batch_size,
                 dict(mesh.shape), 'resuming' if start_step else 'starting', start_step)

  # ------------------------------------------------------------ evaluation
  def run_evals(state, step):
    results = {}
    crops = [('eval', False)] + ([('eval10', True)] if config.eval.ten_crop else [])
    for prefix, ten in crops:
      t0 = time.time()
      m = evaluate(state.params, config, eval_fn=p_eval_step, sharding=data_sharding,
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

  # ------------------------------------------------------------------ loop
  train_iter = input_pipeline.train_iterator(
      config, batch_size=config.batch_size // num_shards, start_step=start_step,
      process_index=shard, process_count=num_shards)
  history, last_eval, train_metrics = [], {}, {}
  t_start = time.time()
  t_log, steps_since_log = time.time(), 0
  with PreemptionFlag() as preempted:
    for step in range(start_step + 1, num_steps + 1):
      batch = parallel.global_batch(next(train_iter), data_sharding)
      state, metrics = p_train_step(state, batch)
      history.append(metrics)
      steps_since_log += 1

      if step % config.log_every_steps == 0 or step == num_steps:
        stacked = jax.device_get(history)
        losses = np.array([m['loss'] for m in stacked])
        if not np.all(np.isfinite(losses)):
          bad = step - len(stacked) + 1 + int(np.argmin(np.isfinite(losses)))
          raise NonFiniteLossError(
              f'Non-finite training loss {losses[np.argmin(np.isfinite(losses))]} at step '
              f'{bad}; lower config.optimizer.learning_rate or check the input data.')
        train_metrics = {f'train_{k}': float(np.mean([m[k] for m in stacked]))
                         for k in stacked[0]}
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
        history, steps_since_log, t_log = [], 0, time.time()

      if step % eval_every == 0 or step == num_steps:
        last_eval = run_evals(state, step)
        if config.schedule.name == 'plateau' and step < num_steps:
          plateau, drop = plateau_update(jax.device_get(state.plateau),
                                         last_eval['eval_top1_error'], config.schedule)
          opt_state = state.opt_state
          if drop:
            lr = float(current_learning_rate(opt_state)) * config.schedule.factor
            opt_state = set_learning_rate(opt_state, lr)
            logging.info('Validation error stopped improving: learning rate divided to %g '
                         '(drop %d of %d).', lr, int(plateau['drops']), config.schedule.max_drops)
          state = jax.device_put(state.replace(plateau=plateau, opt_state=opt_state),
                                 state_sharding)
        ckpt.save_best(step, state, description,
                       {'top1_error': last_eval['eval_top1_error']})
        t_log = time.time()

      ckpt.save(step, state, description, force=(step == num_steps))
      if preempted.any_host(step, config.log_every_steps):
        ckpt.save(step, state, description, force=True)
        ckpt.close()
        writer.flush()
        logging.warning('Preempted at step %d of %d; checkpoint saved. Run the same '
                        'command to resume.', step, num_steps)
        return state

  if not last_eval:  # Resumed a run that had already finished.
    last_eval = run_evals(state, int(state.step))
  ckpt.close()
  writer.flush()
  previous = workdir / 'final_metrics.json'
  if not train_metrics and previous.exists():  # Re-evaluated a finished run:
    train_metrics = {k: v for k, v in json.loads(previous.read_text()).items()  # keep its
                     if k.startswith('train_') or k == 'wall_time_s'}       # train figures.
  final = {'step': int(state.step), 'wall_time_s': time.time() - t_start, **train_metrics,
           'eval_top1_error': last_eval.get('eval_top1_error'),
           'eval_top5_error': last_eval.get('eval_top5_error'),
           'eval_loss': last_eval.get('eval_loss'),
           'eval10_top1_error': last_eval.get('eval10_top1_error'),
           'eval10_top5_error': last_eval.get('eval10_top5_error')}
  if is_main:
    (workdir / 'final_metrics.json').write_text(json.dumps(final, indent=2))
  logging.info('Done: %s', json.dumps(final))
  return state
