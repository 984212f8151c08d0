"""The training loop (section 5) with evaluation (section 6's top-1/top-5 error,
section 4.1's ten test patches).

    train_and_evaluate(config, workdir)

`setup(config)` reads the config once and resolves the run's objects (mesh,
dataset, input recipe, statistics, model, optimizer, the jitted steps) and the
plain values the loop uses into a `Run`, which is passed down explicitly to
the iterators, the evaluation and the loop. The pure steps are in
alexnet_jax.steps, the optimizer in alexnet_jax.optimizer. A resumed run
repeats the same randomness: the dropout key is `fold_in(seed, step)` and the
input stream is a function of the step.

Checkpoints: every one is saved only after its losses and parameters are
checked finite, evaluation steps are saved before they evaluate, and each
carries the loop's bookkeeping (`Progress`), so a rerun continues exactly.
Everything else that can go wrong (signals, lost processes, a stuck process,
failed writes, the workdir lock) is behind alexnet_jax.supervisor, which the
loop calls after each step and around evaluation batches.
"""

import dataclasses
import functools
import json
import math
import time
from typing import Any, Callable, Iterable, Mapping

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.sharding import Mesh, NamedSharding

from alexnet_jax import augment
from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import cli
from alexnet_jax import config_checks
from alexnet_jax import input_pipeline
from alexnet_jax import models
from alexnet_jax import optimizer as optimizer_lib
from alexnet_jax import parallel
from alexnet_jax import progress as progress_lib
from alexnet_jax import resume_policy
from alexnet_jax import stats as stats_lib
from alexnet_jax import steps as steps_lib
from alexnet_jax import supervisor as supervisor_lib

TrainState = steps_lib.TrainState


@cli.user_error
class NonFiniteLossError(FloatingPointError):
  """Training produced a non-finite loss."""


@cli.user_error
class DeadNetworkError(RuntimeError):
  """A ReLU layer had no firing unit through a whole logging window."""
  put_aside = (0, 'dead')  # The supervisor moves every checkpoint: the rerun starts fresh.


@cli.user_error
class EvaluationError(RuntimeError):
  """Evaluation failed; the checkpoint of its step is saved."""


# --------------------------------------------------------------------------
# Setup: the run's objects, resolved once
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything the loop needs, resolved once from the config by `setup`."""
  mesh: Mesh
  data: input_pipeline.Input
  shard: int                     # this process feeds shard `shard` of `num_shards`
  num_shards: int
  data_sharding: NamedSharding
  model: nn.Module
  tx: optax.GradientTransformation
  steps_per_epoch: int
  num_steps: int
  eval_every: int
  abstract_state: TrainState
  state_sharding: Any
  description: dict              # what a checkpoint of this run must match
  init_rng: jax.Array
  train_step: Callable           # (state, batch) -> (state, metrics), jitted
  eval_steps: Mapping[bool, Callable]  # ten_crop -> (params, batch) -> sums, jitted
  # The config's values the loop and the evaluation use.
  batch_size: int
  log_every_steps: int
  eval_batch_size: int
  eval_split: str
  ten_crop: bool                 # also evaluate the paper's ten patches (section 4.1)
  select_on: str                 # the metric the plateau and best/ follow (config.eval.select_on)
  flip: bool                     # ten patches with reflections, else five
  prefetch: int                  # batches in flight to the devices
  min_firing: float              # the dead-layer alarm (config.health)
  stop_on_dead_layer: bool
  hyper: optimizer_lib.Hyper     # section 5's eps, momentum, weight decay
  schedule: optimizer_lib.Schedule  # the learning rate's schedule and plateau drop
  init_from: Any                 # fine-tuning: another run's parameters (config.init_from)
  init_reinit: tuple             # ... with these layers fresh
  checkpoints: dict              # ckpt_lib.Checkpointer's every_steps, keep, use_async
  watchdog_minutes: float
  model_name: str
  config_json: str               # config.json's text; a resume is checked against it


def _device_stats(stats: augment.DeviceStats, mesh: Mesh) -> tuple[augment.DeviceStats, Any]:
  sharding = augment.stats_shardings(parallel.replicated(mesh))
  stats = jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i]),
                       stats, sharding)
  return stats, sharding


def setup(config: ml_collections.ConfigDict, data: input_pipeline.Input,
          workdir: str | None = None) -> Run:
  """Builds the run's objects once: mesh, statistics, model, optimizer, steps.

  `data` is `input_pipeline.resolve(config)`; the config must be valid
  (config_checks.validate). workdir: where statistics are cached when the
  data's directory is read-only (stats.cached).
  """
  # ------------------------------------------------------------------ mesh
  mesh = parallel.make_mesh(config.mesh)
  data_sharding = parallel.batch_sharding(mesh)
  shard, num_shards = parallel.data_shard(mesh)

  # ----------------------------------------------------------------- input
  # The same epoch length as the input stream's (it drops each pass's remainder).
  spe = input_pipeline.steps_per_epoch(data.info.num_train, config.batch_size)
  num_steps = optimizer_lib.total_steps(config.num_train_steps, config.num_epochs, spe)
  # Section 2 / 4.1 statistics (mean image, PCA), passed to the jitted steps,
  # which finish the preprocessing on the device.
  stats, stats_sharding = _device_stats(stats_lib.for_run(
      stats_lib.Settings.of(**config.input), data.dataset,
      lambda: input_pipeline.stats_images(data), workdir), mesh)
  pixel_scale = augment.pixel_scale_of(config.input.pixel_scale)  # float or (R, G, B)

  # ----------------------------------------------------------------- model
  # Section 3.2: one tower per device on the mesh's 'model' axis (if > 1).
  model = models.create_model(config.model)
  # What config.json and each checkpoint record: the config with the model's
  # own defaults written out (the config leaves them None).
  recorded = config.copy_and_resolve_references()
  recorded.model.update(models.recorded_config(config.model, model))
  model = parallel.split_towers(model, mesh)
  hyper = optimizer_lib.Hyper(**config.optimizer)
  schedule = optimizer_lib.Schedule(**config.schedule)
  tx = optimizer_lib.make_optimizer(hyper, schedule, spe, num_steps)
  init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  abstract_state = jax.eval_shape(
      functools.partial(steps_lib.create_train_state, model=model, tx=tx), init_rng)
  state_sharding = parallel.state_shardings(mesh, abstract_state)

  # ----------------------------------------------------------- update step
  jit_train = jax.jit(
      functools.partial(steps_lib.train_step, model=model, tx=tx, rng=dropout_rng,
                        pixel_scale=pixel_scale),
      in_shardings=(state_sharding, data_sharding, stats_sharding),
      out_shardings=(state_sharding, parallel.replicated(mesh)),
      donate_argnums=0, compiler_options=steps_lib.step_compiler_options())

  def eval_step(num_crops):
    step = jax.jit(functools.partial(steps_lib.eval_step, model=model, num_crops=num_crops,
                                     pixel_scale=pixel_scale),
                   in_shardings=(state_sharding.params, data_sharding, stats_sharding),
                   out_shardings=parallel.replicated(mesh),
                   compiler_options=steps_lib.step_compiler_options())
    return lambda params, batch: step(params, batch, stats)

  return Run(
      mesh=mesh, data=data, shard=shard, num_shards=num_shards,
      data_sharding=data_sharding, model=model, tx=tx, steps_per_epoch=spe,
      num_steps=num_steps, eval_every=max(1, int(round(config.eval.every_epochs * spe))),
      abstract_state=abstract_state, state_sharding=state_sharding,
      description=ckpt_lib.describe(recorded, abstract_state.params), init_rng=init_rng,
      train_step=lambda state, batch: jit_train(state, batch, stats),
      # Centre crop, and the paper's ten patches (five without reflections).
      eval_steps={False: eval_step(1),
                  True: eval_step(augment.num_eval_crops(config.input.flip))},
      batch_size=config.batch_size, log_every_steps=config.log_every_steps,
      eval_batch_size=config.eval.batch_size, eval_split=config.dataset.eval_split,
      ten_crop=config.eval.ten_crop, select_on=config.eval.select_on, flip=config.input.flip,
      prefetch=config.dataset.prefetch,
      min_firing=config.health.min_firing, stop_on_dead_layer=config.health.stop_on_dead_layer,
      hyper=hyper, schedule=schedule,
      init_from=config.init_from, init_reinit=tuple(config.init_reinit or ()),
      checkpoints=dict(every_steps=config.checkpoint_every_steps, keep=config.keep_checkpoints,
                       use_async=config.async_checkpoints),
      watchdog_minutes=config.watchdog_minutes, model_name=config.model.name,
      config_json=recorded.to_json_best_effort(indent=2))


# --------------------------------------------------------------------------
# Checkpoint: restore or initialize
# --------------------------------------------------------------------------


def init_params_from(path: str, reinit: tuple, fresh: Any) -> Any:
  """The parameters of the run or checkpoint at `path` (config.init_from), with
  the layers in `reinit` (config.init_reinit, e.g. fc8 for a new class count)
  kept at their fresh initialization."""
  try:
    loaded, _, step = ckpt_lib.load_params(path)
  except (FileNotFoundError, ckpt_lib.CheckpointCorruptError) as e:  # One line, as a mismatch.
    raise ckpt_lib.CheckpointMismatchError(f'config.init_from: {e}') from e
  reinit = tuple(reinit or ())
  params = ckpt_lib.merge_params(jax.device_get(fresh), loaded, reinit, path)
  logging.info('Initialized from %s (step %d)%s.', path, step,
               f'; re-initialized {list(reinit)}' if reinit else '')
  return params


def _check_resume(config_json: str, ckpt: ckpt_lib.Checkpointer) -> Callable:
  """The check a restored checkpoint's saved config must pass (resume_policy)."""
  current = json.loads(config_json)

  def check(saved_config):
    if saved_config is None:
      logging.warning('The checkpoint records no config; resuming without checking changes.')
      return
    for key, old, new in resume_policy.check_resume(saved_config, current, ckpt.latest.directory):
      logging.warning('Resuming with a changed config: %s: %r -> %r (applied from here on).',
                      key, old, new)
  return check


def restore_or_init(run: Run, ckpt: ckpt_lib.Checkpointer) -> tuple[TrainState, dict]:
  """The newest readable checkpoint (its config checked against the run's by
  resume_policy) or a fresh state; with the run's optimizer hyperparameters."""
  state, progress = None, {}
  if ckpt.latest_step() is not None:
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          run.abstract_state, run.state_sharding)
    state, progress = ckpt.restore_with_progress(target, run.description,
                                                 check=_check_resume(run.config_json, ckpt))
  if state is None:
    state = jax.jit(functools.partial(steps_lib.create_train_state, model=run.model, tx=run.tx),
                    out_shardings=run.state_sharding)(run.init_rng)
    if run.init_from:  # Fine-tune: another run's parameters (not its optimizer).
      state = state.replace(params=init_params_from(run.init_from, run.init_reinit,
                                                    state.params))
  opt_state = optimizer_lib.apply_hyperparams(state.opt_state, run.hyper, run.schedule,
                                              int(state.plateau['drops']))
  return jax.device_put(state.replace(opt_state=opt_state), run.state_sharding), progress


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------


def evaluate(run: Run, params: Any, ten_crop: bool,
             supervise: Callable[[Iterable], Iterable] = iter) -> dict:
  """Top-1/top-5 error and loss over the eval split's images that decode, each
  once; 'undecoded': how many did not (named in the log by input_pipeline and
  left out of the errors' denominator). `supervise`: the batches pass through
  it (Supervisor.eval_batches)."""
  batches = parallel.prefetch(input_pipeline.eval_iterator(
      run.data, batch_size=run.eval_batch_size // run.num_shards, ten_crop=ten_crop,
      process_index=run.shard, process_count=run.num_shards), run.data_sharding, run.prefetch)
  eval_fn = run.eval_steps[ten_crop]
  # Dispatched without waiting; fetched at the end.
  sums = jax.device_get([eval_fn(params, batch) for batch in supervise(batches)])
  count = float(sum(float(s['count']) for s in sums))
  if not count:
    raise ValueError(f'The evaluation split {run.eval_split!r} yielded no '
                     'images (none decoded, or it is empty).')
  totals = {k: sum(float(s[k]) for s in sums) for k in sums[0]}
  return {k: float(v) / count for k, v in totals.items() if k != 'count'} | {
      'count': count, 'undecoded': float(run.data.info.num_eval - count)}


def run_evals(run: Run, params: Any, step: int, loop: 'Loop') -> dict:
  """The centre-crop evaluation, and the multi-crop one if run.ten_crop."""
  results = {}
  crops = [('eval', False)] + ([('eval_multicrop', True)] if run.ten_crop else [])
  for prefix, ten in crops:
    t0 = time.time()
    m = evaluate(run, params, ten, loop.supervisor.eval_batches)
    results.update({f'{prefix}_{k}': v for k, v in m.items() if k != 'count'})
    left_out = f', {m["undecoded"]:.0f} not decoded, left out' if m['undecoded'] else ''
    logging.info('step %d %s (%d images%s, %.1fs): loss %.4f, top-1 error %.2f%%, '
                 'top-5 error %.2f%%', step, augment.crop_name(ten, run.flip),
                 m['count'], left_out, time.time() - t0, m['loss'], 100 * m['top1_error'],
                 100 * m['top5_error'])
  loop.writer.write_scalars(step, results)
  return results


def evaluate_and_update(run: Run, state: TrainState, step: int, loop: 'Loop'
                        ) -> tuple[TrainState, dict]:
  """Evaluation at `step` (its checkpoint is already saved), the plateau
  schedule's update (section 5), and the offer to best/; both follow the
  metric run.select_on (config.eval.select_on: the centre crop's top-1 error
  by default)."""
  try:
    results = run_evals(run, state.params, step, loop)
  except Exception as e:
    raise EvaluationError(
        f'Evaluation at step {step} failed ({type(e).__name__}: {e}). The checkpoint of '
        f'step {step} is saved in {loop.ckpt.latest.directory}; fix the cause '
        '(config.eval.*, config.dataset.eval_split) and rerun the same command: it '
        'resumes with this evaluation.') from e
  schedule = run.schedule
  if schedule.name == 'plateau' and step < run.num_steps:
    # Section 5: the learning rate is divided by 10 when the validation error stops improving.
    plateau, drop = optimizer_lib.plateau_update(
        jax.device_get(state.plateau), results[run.select_on], schedule)
    opt_state = optimizer_lib.set_lr_scale(
        state.opt_state, optimizer_lib.plateau_scale(schedule, plateau['drops']))
    if drop:
      logging.info('Validation error stopped improving: learning rate divided by %g '
                   '(drop %d of %d).', 1 / schedule.factor, int(plateau['drops']),
                   schedule.max_drops)
    state = jax.device_put(state.replace(plateau=plateau, opt_state=opt_state),
                           run.state_sharding)
  loop.ckpt.save_best(step, state, run.description, {'top1_error': results[run.select_on]})
  loop.progress.evaluated_step = step
  return state, results


# --------------------------------------------------------------------------
# Loop bookkeeping
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Progress:
  """The bookkeeping saved with every checkpoint, so that a resumed run logs,
  evaluates and totals exactly as an uninterrupted one."""
  t_start: float
  wall_offset: float = 0.0       # wall time of earlier segments
  window: list = dataclasses.field(default_factory=list)  # per-step metrics since the last log
  train_metrics: dict = dataclasses.field(default_factory=dict)  # the last logged window
  evaluated_step: int = 0

  @classmethod
  def restored(cls, saved: dict, t_start: float, start_step: int) -> 'Progress':
    return cls(t_start=t_start, wall_offset=float(saved.get('wall_time_s', 0.0)),
               window=list(saved.get('window', [])),
               train_metrics=dict(saved.get('train_metrics', {})),
               evaluated_step=int(saved.get('evaluated_step', start_step)))

  def wall_time(self) -> float:
    return self.wall_offset + time.time() - self.t_start

  def record(self) -> dict:
    return {'wall_time_s': self.wall_time(), 'window': self.window,
            'train_metrics': self.train_metrics, 'evaluated_step': self.evaluated_step}


@dataclasses.dataclass
class Loop:
  """The loop's services: checkpoints, the metric writer, its bookkeeping and
  the fault boundary."""
  ckpt: ckpt_lib.Checkpointer
  writer: Any
  progress: Progress
  supervisor: supervisor_lib.Supervisor


def _recent_losses(rows: list, first_step: int, before: int, n: int = 5) -> str:
  """'step 12: 2.31, step 13: 2.35, ...': the last `n` losses before step `before`."""
  shown = [(first_step + i, r['loss']) for i, r in enumerate(rows)
           if first_step + i < before][-n:]
  return ', '.join(f'step {s}: {v:.4g}' for s, v in shown) or 'none logged yet'


def step_metrics(history: list, first_step: int, logged: tuple = ()) -> list[dict]:
  """Per-step train metrics as floats; raises NonFiniteLossError if a loss or
  the parameters after an update are not finite (before anything is saved).
  `logged`: (first step, rows) of the window so far, quoted in that message so
  that a spike (instability) can be told from a loss that rose steadily."""
  rows = [{k: float(v) for k, v in m.items()} for m in jax.device_get(history)]
  for i, m in enumerate(rows):
    if not (math.isfinite(m['loss']) and math.isfinite(m['l2_params'])):
      what = f'loss {m["loss"]}' if not math.isfinite(m['loss']) else 'parameters'
      start, earlier = logged or (first_step, [])
      recent = _recent_losses(list(earlier) + rows, start, first_step + i)
      error = NonFiniteLossError(
          f'Non-finite training {what} at step {first_step + i} (losses before it: '
          f'{recent}); no checkpoint holds this state or the one it came from. A sudden '
          'jump is instability (lower config.optimizer.learning_rate or add '
          'config.schedule.warmup_epochs); otherwise check the input data. Then rerun '
          '(the same workdir resumes from the last finite checkpoint; if that diverges '
          'again, use a new --workdir).')
      error.put_aside = (first_step + i - 1, 'diverged')  # The state before led to it.
      raise error
  return rows


def dead_layers(window: list, min_firing: float = 0.0) -> list[str]:
  """ReLU layers that were dead on every step of `window` (per-step metrics): no
  unit fired, or fewer than the fraction `min_firing` of its units."""
  keys = sorted(k for k in window[0] if k.startswith('firing_')) if window else []
  peak = {k: max(m[k] for m in window) for k in keys}
  return [k[len('firing_'):] for k in keys if peak[k] <= 0.0 or peak[k] < min_firing]


def check_alive(run: Run, step: int, window: list) -> None:
  """Stops the run (DeadNetworkError) when a layer was dead through the window."""
  min_firing = run.min_firing
  dead = dead_layers(window, min_firing)
  if not dead:
    return
  message = (
      f'{", ".join(dead)}: fewer than {100 * min_firing:g}% of the units fired on each of '
      f'the {len(window)} steps up to step {step}: the ReLUs pass (almost) no gradient, so '
      'this run cannot learn (issue 17; '
      'docs/init_stability.md). Fixes: smaller non-zero biases (--config.model.bias_init=0.1, '
      'Caffe\'s), a learning-rate warmup (--config.schedule.warmup_epochs=...), or a lower '
      '--config.optimizer.learning_rate; then rerun (this run\'s checkpoints are put '
      'aside in checkpoints-dead/, so the rerun starts fresh). '
      '--config.health.stop_on_dead_layer=False logs this and goes on.')
  if not run.stop_on_dead_layer:
    logging.warning('%s', message)
    return
  raise DeadNetworkError(message)


def log_train(run: Run, step: int, window: list, rate: float, writer) -> dict:
  """The window's mean train metrics: to TensorBoard and one console line."""
  metrics = {f'train_{k}': float(np.mean([m[k] for m in window])) for k in window[0]}
  metrics['train_images_per_second'] = rate
  writer.write_scalars(step, metrics)
  n, spe = run.num_steps, run.steps_per_epoch
  eta = progress_lib.eta_seconds((n - step) * run.batch_size, rate)
  firing = {k[len('train_firing_'):]: v for k, v in metrics.items()
            if k.startswith('train_firing_')}
  lowest = (' | firing min %.0f%% (%s)' % (100 * min(firing.values()),
                                           min(firing, key=firing.get)) if firing else '')
  logging.info(
      'step %d/%d (epoch %.2f, %.1f%%) | loss %.4f | top-1 err %.1f%% | top-5 err %.1f%% '
      '| lr %.2g%s | %.0f img/s | ETA %s', step, n, step / spe, 100 * step / n,
      metrics['train_loss'], 100 * metrics['train_top1_error'],
      100 * metrics['train_top5_error'], metrics['train_learning_rate'], lowest, rate,
      progress_lib.format_eta(eta))
  return metrics


def final_metrics(run: Run, state: TrainState, progress: Progress, last_eval: dict) -> dict:
  """final_metrics.json: the last train window and the last evaluation."""
  keys = ('eval_top1_error', 'eval_top5_error', 'eval_loss', 'eval_multicrop_top1_error',
          'eval_multicrop_top5_error', 'eval_undecoded')
  return {'step': int(state.step), 'wall_time_s': progress.wall_time(),
          **progress.train_metrics, **{k: last_eval.get(k) for k in keys},
          'eval_multicrop_crops': augment.num_eval_crops(run.flip) if run.ten_crop else None}


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------


def train_loop(run: Run, state: TrainState, loop: Loop) -> tuple[TrainState, dict]:
  """Section 5: steps from state.step to run.num_steps; log, evaluate, drop the
  learning rate on a plateau, save. Returns the final state and the last
  evaluation (or early, the step saved, when the supervisor says stop)."""
  progress, ckpt = loop.progress, loop.ckpt
  start_step, last_eval = int(state.step), {}
  if progress.evaluated_step < start_step and (start_step % run.eval_every == 0
                                               or start_step == run.num_steps):
    # Stopped after saving an evaluation step but before its evaluation finished.
    state, last_eval = evaluate_and_update(run, state, start_step, loop)

  train_iter = parallel.prefetch(input_pipeline.train_iterator(
      run.data, batch_size=run.batch_size // run.num_shards, start_step=start_step,
      process_index=run.shard, process_count=run.num_shards), run.data_sharding, run.prefetch)
  history, t_log, since_log = [], time.time(), 0
  for step in range(start_step + 1, run.num_steps + 1):
    state, metrics = run.train_step(state, next(train_iter))
    history.append(metrics)
    since_log += 1
    stop = loop.supervisor.after_step(step)  # A signal: save this step and stop.

    is_log = step % run.log_every_steps == 0 or step == run.num_steps
    is_eval = step % run.eval_every == 0 or step == run.num_steps
    # Evaluation steps are saved first, so a failed or killed evaluation loses nothing.
    is_save = is_eval or stop or ckpt.should_save(step)  # is_eval: also the last step
    if is_log or is_save:  # Checks finiteness before anything is saved.
      progress.window += step_metrics(
          history, step - len(history) + 1,
          (step - len(history) - len(progress.window) + 1, progress.window))
      history = []
    if is_log:
      check_alive(run, step, progress.window)  # Before this step is saved.
      rate = since_log * run.batch_size / max(time.time() - t_log, 1e-9)
      progress.train_metrics = log_train(run, step, progress.window, rate, loop.writer)
      progress.window, since_log = [], 0
    if is_save:
      ckpt.save(step, state, run.description, progress.record(), force=True)
    if stop:  # The resumed run evaluates this step if it is an evaluation step.
      return state, last_eval
    if is_eval:
      state, last_eval = evaluate_and_update(run, state, step, loop)
    if is_log or is_eval:
      t_log = time.time()
  if not last_eval:  # Resumed a run that had already finished and been evaluated.
    last_eval = run_evals(run, state.params, int(state.step), loop)
  return state, last_eval


# --------------------------------------------------------------------------
# train_and_evaluate
# --------------------------------------------------------------------------


def check_config(config, workdir) -> input_pipeline.Input:
  """Validates config and workdir (before anything is written), then resolves
  the dataset and checks what the config asks of it. Raises ConfigError."""
  config_checks.raise_any(config_checks.workdir_problems(workdir) + config_checks.validate(
      config, num_devices=jax.device_count()))
  data = input_pipeline.resolve(config)  # DatasetNotFoundError names the preparation.
  config_checks.raise_any(config_checks.dataset_problems(config, data.info))
  return data


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       hooks: Iterable[supervisor_lib.Hook] = ()) -> TrainState:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  Checks the whole config first (ConfigError; nothing written). Writes
  TensorBoard events, config.json (once the resume check passed) and, at the
  end, final_metrics.json. Returns the final state; raises Preempted after
  SIGTERM/SIGINT (checkpoint saved; alexnet_jax/supervisor.py). `hooks`: extra
  supervisor hooks (tests/fault_main.py injects faults with one).
  """
  t_start = time.time()
  data = check_config(config, workdir)
  workdir = epath.Path(workdir)  # A local path or a bucket (gs://...).
  if '://' not in str(workdir):
    workdir = workdir.absolute()
  run = setup(config, data, str(workdir))
  is_main = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)
  with supervisor_lib.Supervisor(
      workdir, num_steps=run.num_steps, agree_every=run.log_every_steps,
      watchdog_minutes=run.watchdog_minutes, checkpoints=run.checkpoints,
      hooks=hooks) as supervisor:
    state, saved = restore_or_init(run, supervisor.ckpt)
    start_step = int(state.step)
    if is_main:  # Only now: a refused resume leaves the run's record as it was.
      _write_run_record(run, workdir, start_step)
    supervisor.restored(start_step)
    loop = Loop(supervisor.ckpt, supervisor.writer,
                Progress.restored(saved, t_start, start_step), supervisor)
    state, last_eval = train_loop(run, state, loop)
  final = final_metrics(run, state, loop.progress, last_eval)
  if is_main:
    (workdir / 'final_metrics.json').write_text(json.dumps(final, indent=2))
  logging.info('Done: %s', json.dumps(final))
  return state


def _write_run_record(run: Run, workdir: epath.Path, start_step: int) -> None:
  """config.json and class_names.json (for predict and figures), and one log line."""
  (workdir / 'config.json').write_text(run.config_json)
  (workdir / 'class_names.json').write_text(json.dumps(list(run.data.info.class_names)))
  n_params = sum(np.prod(x.shape) for x in jax.tree.leaves(run.abstract_state.params))
  logging.info('Model %s: %s parameters; %d steps (%d per epoch, %.1f epochs), '
               'global batch %d on mesh %s; %s at step %d.', run.model_name,
               f'{n_params:,}', run.num_steps, run.steps_per_epoch,
               run.num_steps / run.steps_per_epoch, run.batch_size,
               dict(run.mesh.shape), 'resuming' if start_step else 'starting', start_step)
