"""The pure, jitted-per-run steps: the train state, one SGD update, evaluation sums.

    state = create_train_state(rng, model, tx)
    state, metrics = train_step(state, batch, stats, model=model, tx=tx, rng=rng)
    sums = eval_step(params, batch, stats, model=model, num_crops=10)

Top-1/top-5 error as section 2 defines them; the ten test patches of section
4.1 (`eval_probs`). `train_step` and `eval_step` are pure: the dropout key is
`fold_in(rng, step)`, so a resumed run repeats the same randomness. The
training loop (alexnet_jax.train), predict, ensemble and convert all use these.
"""

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from alexnet_jax import augment
from alexnet_jax import models
from alexnet_jax import optimizer as optimizer_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  plateau: dict  # {'best', 'bad_evals', 'drops'}: the plateau schedule's record.


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


def train_step(state: TrainState, batch: dict, stats: Optional[augment.DeviceStats] = None, *,
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
  lr = optimizer_lib.current_learning_rate(opt_state)  # The eps this update used.
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


def eval_probs(params: Any, images: jax.Array, stats: Optional[augment.DeviceStats] = None, *,
               model: nn.Module, num_crops: int = 1, pixel_scale: float = 1.0) -> jax.Array:
  """(b, K) class probabilities of evaluation inputs: with `stats`, the
  pipeline's uint8 images (preprocessing.eval_example), cut into `num_crops`
  patches and finished here (augment.eval_images); without, network inputs."""
  if stats is not None:
    images = augment.eval_images(images, stats, models.input_shape(model)[0], num_crops,
                                 pixel_scale)
  return predict_probs(params, images, model=model)


def eval_step(params: Any, batch: dict, stats: Optional[augment.DeviceStats] = None, *,
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

