r"""One training step, ours (JAX/Flax, jitted) vs the same network in PyTorch.

A step is what training repeats: forward, backward and the paper's optimizer
update (section 5: v <- 0.9 v - 0.0005 eps w - eps dL/dw; w <- w + v, eps 0.01),
on the paper's AlexNet (two towers, LRN, overlapping pooling, dropout 0.5, 227
crops). The batch is synthetic and already on the device, so this measures the
model and not the input pipeline (benchmarks/input_pipeline.py measures that).

  ours           alexnet_jax.train.train_step under jax.jit with the state
                 donated, exactly as train_and_evaluate runs it (it also
                 computes the logged metrics: top-1/5 error, l2 norms).
  torch_eager    benchmarks/torch_alexnet.py (nn.Conv2d(groups=2),
                 nn.LocalResponseNorm with alpha * n, NCHW), eager.
  torch_eager_cl the same in channels_last.
  torch_compile  the same in channels_last under torch.compile (the model and
                 the update are compiled).

Both frameworks apply the paper's rule as written (the PyTorch side with
torch._foreach ops; torch.optim.SGD scales by eps after the momentum trace,
which equals it only at a constant eps). Mixed precision ('bfloat16') is
bfloat16 compute with float32 parameters: AlexNet(dtype=bfloat16) for ours,
torch.autocast(bfloat16) for PyTorch.

Every (implementation, dtype, batch) cell runs in its own process, so peak
memory is per cell and JAX and PyTorch never share an allocator; with --rounds
> 1 the cells alternate and the table reports each cell's median round.
Compilation and the warm-up steps are timed apart from the rate.

  pip install -r benchmarks/requirements.txt
  python benchmarks/train_step.py --output=/tmp/train_step.json   # CPU: batch 32, float32
  python benchmarks/train_step.py --check       # ours and PyTorch: same loss, same update
  python benchmarks/train_step.py --ablation    # our step's speed-ups, one at a time

On a GPU the defaults become batches 128, 256, 512 in float32 and bfloat16
(benchmarks/README.md has the one-line command for an H100).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
IMPLS = ('jax', 'torch_eager', 'torch_eager_cl', 'torch_compile')
TORCH_IMPLS = IMPLS[1:]

# Peak dense FLOP/s per device in TFLOP/s, from the vendors' data sheets (no
# sparsity): bfloat16 and TF32 on the tensor cores, and plain float32. The first
# key contained in the device's name is used; --peak_tflops overrides.
PEAK_TFLOPS = (
    ('H100 PCIe', {'bfloat16': 756.0, 'tf32': 378.0, 'float32': 51.2}),
    ('H100 NVL', {'bfloat16': 835.0, 'tf32': 418.0, 'float32': 60.0}),
    ('H100', {'bfloat16': 989.4, 'tf32': 494.7, 'float32': 66.9}),   # SXM (80GB HBM3)
    ('H200', {'bfloat16': 989.4, 'tf32': 494.7, 'float32': 66.9}),   # H100's compute
    ('A100', {'bfloat16': 312.0, 'tf32': 156.0, 'float32': 19.5}),
)


def peak_tflops(device: str, dtype: str, fp32_precision: str):
  """Peak TFLOP/s for MFU, or None (CPUs and unlisted devices)."""
  for key, peaks in PEAK_TFLOPS:
    if key.lower() in device.lower():
      if dtype == 'bfloat16':
        return peaks['bfloat16']
      return peaks['tf32' if fp32_precision == 'tf32' else 'float32']
  return None


# --------------------------------------------------------------------------
# Shared by the workers
# --------------------------------------------------------------------------


class Timer:
  """Wall and process CPU seconds of a block."""

  def __enter__(self):
    self.t0, self.c0 = time.perf_counter(), time.process_time()
    return self

  def __exit__(self, *exc):
    self.wall = time.perf_counter() - self.t0
    self.cpu = time.process_time() - self.c0


def _rss_bytes() -> int:
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB.


def synthetic_batch(batch: int, size: int, num_classes: int, seed: int = 0):
  """(images NHWC float32, labels int32) in NumPy: mean-subtracted pixel range."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  images = rng.uniform(-128, 128, (batch, size, size, 3)).astype(np.float32)
  labels = rng.integers(0, num_classes, batch).astype(np.int32)
  return images, labels


def model_fields(model_name: str) -> dict:
  """The preset's network fields (JSON), to build the same network in PyTorch."""
  from alexnet_jax import models  # pylint: disable=g-import-not-at-top
  model = models.PRESETS[model_name]()
  skip = {'parent', 'name', 'dtype', 'param_dtype', 'mesh', 'tower_axis'}
  fields = {}
  for f in type(model).__dataclass_fields__:
    v = getattr(model, f)
    if f not in skip and isinstance(v, (int, float, str, bool, tuple, list, type(None))):
      fields[f] = list(v) if isinstance(v, tuple) else v
  return fields


# --------------------------------------------------------------------------
# Ours: JAX
# --------------------------------------------------------------------------


def jax_setup(model_name: str, dtype: str, fp32_precision: str, dropout: bool = True,
              **model_overrides):
  """(config, model, tx, compiler options) as train_and_evaluate builds them."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() == 'gpu':
    jax.config.update('jax_default_matmul_precision',
                      'tensorfloat32' if fp32_precision == 'tf32' else 'highest')
  from alexnet_jax import models, optimizer, steps as steps_lib  # pylint: disable=g-import-not-at-top
  from configs import ilsvrc  # pylint: disable=g-import-not-at-top
  config = ilsvrc.get_config()
  if model_name != config.model.name:  # Another preset, with its own defaults.
    config.model = type(config.model)({'name': model_name})
  config.model.dtype = dtype
  if not dropout:
    config.model.dropout_rate = 0.0
  config.model.update(model_overrides)
  model = models.create_model(config.model)
  tx = optimizer.make_optimizer(  # 'plateau': a constant eps.
      optimizer.Hyper(**config.optimizer), optimizer.Schedule(**config.schedule), 1000, 1000)
  options = steps_lib.step_compiler_options()
  return config, model, tx, options


def jax_step_fn(model, tx, options):
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top
  return jax.jit(functools.partial(steps_lib.train_step, model=model, tx=tx,
                                   rng=jax.random.PRNGKey(1)),
                 donate_argnums=0, compiler_options=options)


def run_jax(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import models, steps as steps_lib, summary  # pylint: disable=g-import-not-at-top
  config, model, tx, options = jax_setup(args.model, args.dtype, args.fp32_precision,
                                         **json.loads(args.jax_overrides))
  rss0 = _rss_bytes()
  device = jax.devices()[0]
  images, labels = synthetic_batch(args.batch, model.input_size, model.num_classes)
  batch = jax.device_put({'image': images, 'label': labels}, device)
  state = jax.jit(lambda k: steps_lib.create_train_state(k, model, tx))(jax.random.PRNGKey(0))
  jax.block_until_ready(state)
  with Timer() as t_setup:
    step = jax_step_fn(model, tx, options)
    with Timer() as t_compile:
      compiled = step.lower(state, batch).compile()
    for _ in range(args.warmup):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
  with Timer() as t:
    for _ in range(args.steps):
      state, metrics = compiled(state, batch)  # No host transfer inside the loop.
    jax.block_until_ready((state, metrics))
  loss = float(metrics['loss'])
  stats = device.memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  peak_kind = 'device'
  if peak is None:
    peak, peak_kind = _peak_rss_bytes() - rss0, 'host RSS above baseline'
  memory = compiled.memory_analysis()
  return {
      'step_s': t.wall / args.steps, 'cpu_s_per_step': t.cpu / args.steps,
      'compile_s': t_compile.wall, 'warmup_s': t_setup.wall, 'loss': loss,
      'peak_bytes': int(peak), 'peak_kind': peak_kind,
      'xla_temp_bytes': getattr(memory, 'temp_size_in_bytes', None),
      'flops_per_image': summary.train_flops_per_image(model),
      'device': device.device_kind, 'backend': jax.default_backend(),
      'versions': {'jax': jax.__version__},
      'settings': {
          'compiler_options': options,
          'lrn_impl': models._resolve_impl(model.lrn_impl),  # pylint: disable=protected-access
          'grouped_conv_impl': model.grouped_conv_impl, 'pool_impl': model.pool_impl,
          'model_overrides': json.loads(args.jax_overrides),
          'matmul_precision': str(jax.config.jax_default_matmul_precision)},
  }


# --------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------


def torch_paper_sgd(params, velocity, lr: float, momentum: float, weight_decay: float,
                    decay_biases: bool = False):
  """The paper's rule in place: v <- m v - wd eps w - eps g; w <- w + v, with
  weight decay on the weights only (config.optimizer.weight_decay_on='kernels'),
  or on the biases too."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    grads = [p.grad for p in params]
    decayed = [i for i, p in enumerate(params) if decay_biases or p.ndim > 1]
    torch._foreach_mul_(velocity, momentum)                      # pylint: disable=protected-access
    torch._foreach_add_([velocity[i] for i in decayed], [params[i] for i in decayed],  # pylint: disable=protected-access
                        alpha=-lr * weight_decay)
    torch._foreach_add_(velocity, grads, alpha=-lr)              # pylint: disable=protected-access
    torch._foreach_add_(params, velocity)                        # pylint: disable=protected-access


def torch_paper_init_(net, seed: int = 0):
  """Section 5: weights N(0, 0.01^2); biases 1 in conv2, conv4, conv5, fc6, fc7, else 0."""
  import torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, module in net.named_children():
      if hasattr(module, 'weight') and hasattr(module, 'bias') and name[:2] in ('co', 'fc'):
        module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.01)
        module.bias.fill_(1.0 if name in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7') else 0.0)


def torch_step_fn(net, impl: str, dtype: str, device: str, lr: float, momentum: float,
                  weight_decay: float, velocity=None, compile_mode=None,
                  decay_biases: bool = False):
  """A function (x, y) -> loss doing one forward, backward and paper update."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  params = list(net.parameters())
  if velocity is None:
    velocity = [torch.zeros_like(p) for p in params]
  forward = torch.compile(net, mode=compile_mode) if impl == 'torch_compile' else net
  update = torch_paper_sgd
  if impl == 'torch_compile':
    update = torch.compile(torch_paper_sgd, mode=compile_mode)
  autocast = dtype == 'bfloat16'

  def step(x, y):
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
      logits = forward(x)
    loss = F.cross_entropy(logits.float(), y)
    for p in params:
      p.grad = None
    loss.backward()
    update(params, velocity, lr, momentum, weight_decay, decay_biases)
    return loss

  return step


def _torch_alexnet_module():
  sys.path.insert(0, HERE)
  import torch_alexnet  # pylint: disable=g-import-not-at-top
  return torch_alexnet


def run_torch(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  torch_alexnet = _torch_alexnet_module()
  if args.threads:
    torch.set_num_threads(args.threads)
  cuda = torch.cuda.is_available()
  device = 'cuda' if cuda else 'cpu'
  if cuda:
    allow = args.fp32_precision == 'tf32'
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    torch.backends.cudnn.benchmark = True
  fields = json.loads(args.model_fields)
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()
            if k in torch_alexnet.ALEXNET_FIELDS}
  rss0 = _rss_bytes()
  cl = args.impl in ('torch_eager_cl', 'torch_compile')
  fmt = torch.channels_last if cl else torch.contiguous_format
  net = torch_alexnet.TorchAlexNet(**fields)
  torch_paper_init_(net)
  net = net.to(device=device, memory_format=fmt).train()
  images, labels = synthetic_batch(args.batch, fields.get('input_size', 227),
                                   fields.get('num_classes', 1000))
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device).contiguous(memory_format=fmt)
  y = torch.from_numpy(labels).long().to(device)
  step = torch_step_fn(net, args.impl, args.dtype, device, args.lr, args.momentum,
                       args.weight_decay, compile_mode=args.torch_compile_mode or None)
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  with Timer() as t_setup:
    for _ in range(args.warmup):
      loss = step(x, y)
    sync()
  with Timer() as t:
    for _ in range(args.steps):
      loss = step(x, y)
    sync()
  if cuda:
    peak, peak_kind = torch.cuda.max_memory_allocated(), 'device'
  else:
    peak, peak_kind = _peak_rss_bytes() - rss0, 'host RSS above baseline'
  return {
      'step_s': t.wall / args.steps, 'cpu_s_per_step': t.cpu / args.steps,
      'compile_s': None, 'warmup_s': t_setup.wall, 'loss': loss.item(),
      'peak_bytes': int(peak), 'peak_kind': peak_kind,
      'device': torch.cuda.get_device_name() if cuda else 'cpu',
      'versions': {'torch': torch.__version__},
      'settings': {'channels_last': cl, 'threads': torch.get_num_threads(),
                   'compile_mode': args.torch_compile_mode or 'default',
                   'tf32': bool(cuda and torch.backends.cudnn.allow_tf32)},
  }


# --------------------------------------------------------------------------
# --check: the same computation in both frameworks
# --------------------------------------------------------------------------


def check(model_name: str = 'alexnet', batch: int = 8, steps: int = 1, seed: int = 0,
          rule: str = 'paper', **model_overrides) -> dict:
  """See _check; full float32 precision for JAX's matmuls only within it."""
  import jax  # pylint: disable=g-import-not-at-top
  with jax.default_matmul_precision('highest'):
    return _check(model_name, batch, steps, seed, rule, model_overrides)


def _check(model_name: str, batch: int, steps: int, seed: int, rule: str,
           model_overrides: dict) -> dict:
  """Ours and PyTorch from the same weights, velocity and batch, dropout off, float32.

  The velocity starts random (the same in both), not zero, so that one step
  exercises every term of the rule, the momentum's too. ``rule`` is ours
  (config.optimizer.rule); PyTorch always applies the paper's.

  Returns per step the two losses and, per parameter, the difference of the
  updates (w_new - w_old, in PyTorch's layout) relative to the update, in L2
  norm and in the largest element, and the largest difference of the weights.
  The L2 norm is the test. Steps after the first differ more: the weights then
  differ by float32 rounding, and a ReLU input or a pooling tie within rounding
  of its threshold can go the other way, which moves gradients below it by
  ~1e-3 of their size.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch_alexnet = _torch_alexnet_module()
  config, model, tx, options = jax_setup(model_name, 'float32', 'highest', dropout=False,
                                         **model_overrides)
  from alexnet_jax import optimizer, steps as steps_lib  # pylint: disable=g-import-not-at-top
  config.optimizer.rule = rule
  tx = optimizer.make_optimizer(optimizer.Hyper(**config.optimizer),
                                optimizer.Schedule(**config.schedule), 1000, 1000)
  state = steps_lib.create_train_state(jax.random.PRNGKey(seed), model, tx)
  rng = np.random.default_rng(seed)
  velocity = jax.tree.map(  # ~ the size of one step's update.
      lambda p: (1e-4 * rng.standard_normal(p.shape)).astype(np.float32), state.params)
  state = state.replace(opt_state=jax.tree_util.tree_map_with_path(
      lambda path, x: velocity_leaf(path, velocity, x), state.opt_state))
  traces = [x for path, x in jax.tree_util.tree_leaves_with_path(state.opt_state)
            if 'trace' in str(path)]
  if len(traces) != len(jax.tree.leaves(velocity)):
    raise ValueError('Found no momentum trace in the optimizer state to set.')
  images, labels = synthetic_batch(batch, model.input_size, model.num_classes, seed)
  step = jax_step_fn(model, tx, options)

  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  net = torch_alexnet.torch_alexnet(model).to(device)
  writable = lambda tree: jax.tree.map(np.array, jax.device_get(tree))
  torch_alexnet.copy_flax_params_to_torch(writable(state.params), net.cpu())
  net.to(device).train()
  o = config.optimizer
  as_torch = torch_alexnet.torch_alexnet(model)  # Holds our weights in PyTorch's layout.
  torch_alexnet.copy_flax_params_to_torch(writable(velocity), as_torch)
  torch_velocity = [v.detach().clone().to(device) for v in as_torch.parameters()]
  torch_step = torch_step_fn(net, 'torch_eager', 'float32', device, o.learning_rate,
                             o.momentum, o.weight_decay, velocity=torch_velocity,
                             decay_biases=o.weight_decay_on == 'all')
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device)
  y = torch.from_numpy(labels).long().to(device)

  def torch_layout(params):
    torch_alexnet.copy_flax_params_to_torch(writable(params), as_torch)
    return {k: v.detach().numpy().astype(np.float64) for k, v in as_torch.named_parameters()}

  def torch_weights():
    return {k: v.detach().cpu().numpy().astype(np.float64) for k, v in net.named_parameters()}

  ours_old, theirs_old = torch_layout(state.params), torch_weights()
  start = max(abs(ours_old[k] - theirs_old[k]).max() for k in ours_old)
  results = {'model': model_name, 'batch': batch, 'start_max_abs_diff': float(start),
             'device': {'jax': jax.devices()[0].device_kind, 'torch': device},
             'optimizer': {'learning_rate': o.learning_rate, 'momentum': o.momentum,
                           'weight_decay': o.weight_decay, 'rule': o.rule}, 'steps': []}
  batch_jax = {'image': images, 'label': labels}
  for i in range(steps):
    state, metrics = step(state, batch_jax)
    loss_torch = torch_step(x, y).item()
    ours, theirs = torch_layout(state.params), torch_weights()
    layers = {}
    for k in theirs:
      du, dt = ours[k] - ours_old[k], theirs[k] - theirs_old[k]
      layers[k] = {'update_rel_l2': float(np.linalg.norm(du - dt) / max(np.linalg.norm(dt), 1e-30)),
                   'update_rel_max': float(abs(du - dt).max() / max(abs(dt).max(), 1e-30)),
                   'weight_max_abs_diff': float(abs(ours[k] - theirs[k]).max()),
                   'update_max_abs': float(abs(dt).max())}
    results['steps'].append({'step': i + 1, 'loss_ours': float(metrics['loss']),
                             'loss_torch': loss_torch, 'layers': layers})
    ours_old, theirs_old = ours, theirs
  return results


def velocity_leaf(path, velocity, x):
  """In an optax state, the leaf of ``velocity`` where ``path`` is a momentum trace."""
  import jax  # pylint: disable=g-import-not-at-top
  names = [getattr(k, 'name', getattr(k, 'key', None)) for k in path]
  if 'trace' not in names:
    return x
  sub = velocity
  for k in names[names.index('trace') + 1:]:
    sub = sub[k]
  return jax.numpy.asarray(sub, x.dtype)


def format_check(r: dict) -> str:
  lines = [f"--check: {r['model']}, batch {r['batch']}, float32, dropout off, paper rule "
           f"(eps {r['optimizer']['learning_rate']}, momentum {r['optimizer']['momentum']}, "
           f"weight decay {r['optimizer']['weight_decay']}); same start weights "
           f"(max |diff| {r['start_max_abs_diff']:.1e}) and velocity (random)"]
  for s in r['steps']:
    rel = abs(s['loss_ours'] - s['loss_torch']) / abs(s['loss_torch'])
    lines.append(f"step {s['step']}: loss ours {s['loss_ours']:.7f}  PyTorch {s['loss_torch']:.7f}"
                 f"  (rel diff {rel:.1e})")
    lines.append(f"  {'parameter':<14}{'max |update|':>14}{'update diff, L2':>17}"
                 f"{'largest':>10}{'max |w diff|':>14}")
    for k, v in s['layers'].items():
      lines.append(f"  {k:<14}{v['update_max_abs']:>14.3e}{v['update_rel_l2']:>17.1e}"
                   f"{v['update_rel_max']:>10.1e}{v['weight_max_abs_diff']:>14.1e}")
  lines.append('(update diff: |update ours - update PyTorch| / |update PyTorch|, in L2 norm '
               'and in the largest element)')
  return '\n'.join(lines)


def check_passes(r: dict, loss_rtol: float = 1e-5, update_rtol: float = 1e-4) -> bool:
  """Losses within loss_rtol and every update within update_rtol (L2), each step."""
  for s in r['steps']:
    if abs(s['loss_ours'] - s['loss_torch']) > loss_rtol * abs(s['loss_torch']):
      return False
    if any(v['update_rel_l2'] > update_rtol for v in s['layers'].values()):
      return False
  return True



# --------------------------------------------------------------------------
# --ablation: the step's speed-ups one at a time (benchmarks/README.md)
# --------------------------------------------------------------------------

# Cumulative: each row adds one change to the row above. The first row is the
# step as it was before issue 8: LRN as a banded matmul with a general power,
# max pooling through reduce_window, XLA's default options.
ABLATION = (
    ('before', dict(lrn_impl='matmul', pool_impl='reduce_window'), 'default', 'pow'),
    ('+ LRN power as rsqrt', dict(lrn_impl='matmul', pool_impl='reduce_window'), 'default', None),
    ('+ max pool as slices', dict(lrn_impl='matmul', pool_impl='slices'), 'default', None),
    ('+ convs off YNNPACK', dict(lrn_impl='matmul', pool_impl='slices'),
     {'xla_cpu_experimental_ynn_fusion_type':
          'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}, None),
    ('+ copy region analysis', dict(lrn_impl='matmul', pool_impl='slices'), 'project', None),
    ('+ LRN sum as reduce_window', {}, 'project', None),   # = the defaults now
)


def ablation(batch: int, reps: int) -> list:
  """Interleaved in one process, so every row sees the same machine load."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from alexnet_jax import models, steps as steps_lib  # pylint: disable=g-import-not-at-top
  on_cpu = jax.default_backend() == 'cpu'

  @contextlib.contextmanager
  def power(kind):
    original = models._neg_pow  # pylint: disable=protected-access
    if kind == 'pow':
      models._neg_pow = lambda s, beta: s ** (-beta)  # pylint: disable=protected-access
    try:
      yield
    finally:
      models._neg_pow = original  # pylint: disable=protected-access

  images, labels = synthetic_batch(batch, 227, 1000)
  data = jax.device_put({'image': images, 'label': labels})
  compiled_steps, states = [], []
  for name, overrides, options, pow_kind in ABLATION:
    _, model, tx, project = jax_setup('alexnet', 'float32', 'tf32', **overrides)
    if options == 'project':
      options = project
    elif options == 'default' or not on_cpu:
      options = None
    state = jax.jit(lambda k, model=model, tx=tx: steps_lib.create_train_state(k, model, tx))(
        jax.random.PRNGKey(0))
    with power(pow_kind):
      compiled = jax_step_fn(model, tx, options).lower(state, data).compile()
    state, _ = compiled(state, data)
    compiled_steps.append(compiled)
    states.append(state)
  wall = [[] for _ in ABLATION]
  cpu = [[] for _ in ABLATION]
  for _ in range(reps):
    for i, compiled in enumerate(compiled_steps):
      with Timer() as t:
        states[i], metrics = compiled(states[i], data)
        jax.block_until_ready((states[i], metrics))
      wall[i].append(t.wall)
      cpu[i].append(t.cpu)
  rows = []
  for i, (name, *_) in enumerate(ABLATION):
    rows.append({'variant': name, 'step_s': float(np.median(wall[i])),
                 'cpu_s_per_step': float(np.median(cpu[i])),
                 'img_per_s': batch / float(np.median(wall[i]))})
  return rows


def format_ablation(rows, batch: int) -> str:
  base = rows[0]
  header = (f"{'JAX step, batch ' + str(batch):<30}{'img/s':>8}{'step ms':>9}{'CPU s/step':>12}"
            f"{'speed-up':>10}{'CPU speed-up':>14}")
  lines = [header, '-' * len(header)]
  for r in rows:
    lines.append(f"{r['variant']:<30}{r['img_per_s']:>8.1f}{1e3 * r['step_s']:>9.0f}"
                 f"{r['cpu_s_per_step']:>12.2f}{base['step_s'] / r['step_s']:>9.2f}x"
                 f"{base['cpu_s_per_step'] / r['cpu_s_per_step']:>13.2f}x")
  return '\n'.join(lines)


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


def _probe(env) -> dict:
  code = ('import json, jax; d = jax.devices()[0]; '
          'print(json.dumps({"backend": jax.default_backend(), "device": d.device_kind}))')
  out = subprocess.run([sys.executable, '-c', code], env=env, check=True,
                       capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _torch_available(python: str) -> bool:
  return subprocess.run([python, '-c', 'import torch'], capture_output=True).returncode == 0


def _cell_cmd(args, impl, dtype, batch, fields, optimizer):
  python = args.torch_python if impl in TORCH_IMPLS else sys.executable
  return [python, os.path.abspath(__file__), f'--worker={impl}', f'--dtype={dtype}',
          f'--batch={batch}', f'--steps={args.steps}', f'--warmup={args.warmup}',
          f'--threads={args.threads}', f'--model={args.model}',
          f'--fp32_precision={args.fp32_precision}', f'--model_fields={json.dumps(fields)}',
          f'--jax_overrides={args.jax_overrides}', f'--torch_compile_mode={args.torch_compile_mode}',
          f"--lr={optimizer['learning_rate']}", f"--momentum={optimizer['momentum']}",
          f"--weight_decay={optimizer['weight_decay']}"]


def format_table(rows) -> str:
  header = (f"{'implementation':<16}{'dtype':<10}{'batch':>6}{'img/s':>9}{'ours/this':>10}"
            f"{'step ms':>10}{'warm-up s':>10}{'peak GiB':>9}{'TFLOP/s':>9}{'MFU':>7}"
            f"{'img/cpu-s':>10}")
  lines = [header, '-' * len(header)]
  for r in rows:
    if 'error' in r:
      lines.append(f"{r['impl']:<16}{r['dtype']:<10}{r['batch']:>6}  failed: {r['error']}")
      continue
    ratio = f"{r['ours_over_this']:.2f}" if r.get('ours_over_this') else '-'
    mfu = f"{100 * r['mfu']:.1f}%" if r.get('mfu') is not None else 'n/a'
    lines.append(
        f"{r['impl']:<16}{r['dtype']:<10}{r['batch']:>6}{r['img_per_s']:>9.1f}{ratio:>10}"
        f"{1e3 * r['step_s']:>10.1f}{r['warmup_s']:>10.1f}{r['peak_bytes'] / 2**30:>9.2f}"
        f"{r['tflops']:>9.3f}{mfu:>7}{r['img_per_cpu_s']:>10.2f}")
  return '\n'.join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--impls', default=None, help=f'comma list of {",".join(IMPLS)} (default: all '
                 'whose framework imports)')
  p.add_argument('--batch_sizes', default=None, help='default: 128,256,512 on a GPU, 32 on CPU')
  p.add_argument('--dtypes', default=None, help='float32,bfloat16 (default: both on a GPU, '
                 'float32 on CPU)')
  p.add_argument('--steps', type=int, default=None, help='timed steps (default 50 GPU, 3 CPU)')
  p.add_argument('--warmup', type=int, default=None, help='untimed steps (default 5 GPU, 1 CPU)')
  p.add_argument('--rounds', type=int, default=1, help='repeat every cell; report the median')
  p.add_argument('--threads', type=int, default=0, help='CPU: pin each cell to this many '
                 'cores (0: all)')
  p.add_argument('--model', default='alexnet', help='preset of alexnet_jax.models')
  p.add_argument('--jax_overrides', default='{}', help='JSON of config.model fields for our '
                 'cells, e.g. \'{"pool_impl": "slices", "grouped_conv_impl": "split"}\'')
  p.add_argument('--fp32_precision', default='tf32', choices=('tf32', 'highest'),
                 help='GPU float32 matmuls/convs in both frameworks: TF32 (JAX default) or full')
  p.add_argument('--peak_tflops', type=float, default=None, help='device peak for MFU')
  p.add_argument('--torch_compile_mode', default='', help="torch.compile's mode, e.g. "
                 'max-autotune (default: its default)')
  p.add_argument('--torch_python', default=sys.executable,
                 help='interpreter for the PyTorch cells (e.g. a separate venv)')
  p.add_argument('--output', default=None, help='write the results as JSON here')
  p.add_argument('--check', action='store_true', help='compare one step of ours and '
                 'PyTorch on the same weights and batch, then exit')
  p.add_argument('--check_batch', type=int, default=8)
  p.add_argument('--ablation', action='store_true', help='time the JAX step with its '
                 'speed-ups added one at a time (interleaved, --rounds steps each), then exit')
  # Worker-only arguments.
  p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  p.add_argument('--dtype', default='float32', help=argparse.SUPPRESS)
  p.add_argument('--batch', type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument('--impl', default=None, help=argparse.SUPPRESS)
  p.add_argument('--model_fields', default='{}', help=argparse.SUPPRESS)
  p.add_argument('--lr', type=float, default=0.01, help=argparse.SUPPRESS)
  p.add_argument('--momentum', type=float, default=0.9, help=argparse.SUPPRESS)
  p.add_argument('--weight_decay', type=float, default=5e-4, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  sys.path.insert(0, ROOT)

  if args.worker:
    if args.threads and hasattr(os, 'sched_setaffinity'):
      os.sched_setaffinity(0, set(range(args.threads)))
    args.impl = args.worker
    result = run_jax(args) if args.worker == 'jax' else run_torch(args)
    print(json.dumps(result))
    return 0

  if args.ablation:
    batch = int((args.batch_sizes or '32').split(',')[0])
    rows = ablation(batch, max(args.rounds, 5))
    print(format_ablation(rows, batch))
    if args.output:
      with open(args.output, 'w') as f:
        json.dump({'batch': batch, 'rows': rows}, f, indent=2)
    return 0

  if args.check:
    r = check(args.model, args.check_batch)
    print(format_check(r))
    ok = check_passes(r)
    print('PASS: same loss and same update' if ok else 'FAIL')
    if args.output:
      with open(args.output, 'w') as f:
        json.dump(r, f, indent=2)
    return 0 if ok else 1

  env = dict(os.environ)
  env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # Memory for PyTorch too.
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  probe = _probe(env)
  gpu = probe['backend'] == 'gpu'
  batches = [int(b) for b in (args.batch_sizes or ('128,256,512' if gpu else '32')).split(',')]
  dtypes = (args.dtypes or ('float32,bfloat16' if gpu else 'float32')).split(',')
  args.steps = args.steps or (50 if gpu else 3)
  args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
  if args.impls:
    impls = args.impls.split(',')
  else:
    impls = ['jax'] + (list(TORCH_IMPLS) if _torch_available(args.torch_python) else [])
  unknown = sorted(set(impls) - set(IMPLS))
  if unknown:
    p.error(f'unknown --impls {unknown}; choose from {IMPLS}')

  from configs import ilsvrc  # pylint: disable=g-import-not-at-top
  optimizer = dict(ilsvrc.get_config().optimizer)
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # Shapes only; the cells get `env`.
  fields = model_fields(args.model)
  cells = [(impl, dtype, batch) for dtype in dtypes for batch in batches for impl in impls]
  results = {c: [] for c in cells}
  for _ in range(args.rounds):
    for cell in cells:
      cmd = _cell_cmd(args, *cell, fields, optimizer)
      out = subprocess.run(cmd, env=env, capture_output=True, text=True)
      if out.returncode:
        tail = (out.stderr.strip().splitlines() or ['?'])[-1]
        results[cell].append({'error': tail[-200:]})
        print(f'{cell}: failed: {tail}', file=sys.stderr)
      else:
        results[cell].append(json.loads(out.stdout.strip().splitlines()[-1]))
      print(f'{cell}: done', file=sys.stderr, flush=True)

  flops = next((r['flops_per_image'] for rs in results.values() for r in rs
                if 'flops_per_image' in r), None)
  if flops is None:
    from alexnet_jax import models, summary  # pylint: disable=g-import-not-at-top
    flops = summary.train_flops_per_image(models.PRESETS[args.model]())
  rows = []
  for (impl, dtype, batch), rs in results.items():
    ok = [r for r in rs if 'error' not in r]
    row = {'impl': impl, 'dtype': dtype, 'batch': batch}
    if not ok:
      rows.append(row | {'error': rs[0]['error']})
      continue
    step_s = statistics.median(r['step_s'] for r in ok)
    median = min(ok, key=lambda r: abs(r['step_s'] - step_s))
    row |= {k: median[k] for k in ('device', 'warmup_s', 'compile_s', 'peak_bytes', 'peak_kind',
                                   'loss', 'settings', 'versions') if k in median}
    row['step_s'] = step_s
    row['img_per_s'] = batch / step_s
    row['img_per_cpu_s'] = batch / statistics.median(r['cpu_s_per_step'] for r in ok)
    row['tflops'] = flops * batch / step_s / 1e12
    peak = args.peak_tflops or peak_tflops(row['device'], dtype, args.fp32_precision)
    row['peak_tflops'] = peak
    row['mfu'] = row['tflops'] / peak if peak else None
    row['rounds'] = rs
    rows.append(row)
  for row in rows:  # ours / this, and for ours: ours / PyTorch's best.
    if 'error' in row:
      continue
    ours = next((r for r in rows if r['impl'] == 'jax' and r['dtype'] == row['dtype']
                 and r['batch'] == row['batch'] and 'error' not in r), None)
    if ours is None:
      continue
    if row['impl'] == 'jax':
      torch_rows = [r for r in rows if r['impl'] in TORCH_IMPLS and r['dtype'] == row['dtype']
                    and r['batch'] == row['batch'] and 'error' not in r]
      if torch_rows:
        best = max(torch_rows, key=lambda r: r['img_per_s'])
        row['ours_over_this'] = ours['img_per_s'] / best['img_per_s']
        row['best_torch'] = best['impl']
    else:
      row['ours_over_this'] = ours['img_per_s'] / row['img_per_s']
  table = format_table(rows)
  device = next((r['device'] for r in rows if 'device' in r), probe['device'])
  print(f'device: {device}; model {args.model}: {flops / 1e9:.3f} training GFLOP/image '
        f'(3 x 2 x MACs, alexnet_jax.summary); {args.steps} timed steps after {args.warmup} '
        f'warm-up, median of {args.rounds} round(s)')
  print(table)
  print("ours/this: ours' img/s over this row's; on ours' rows, over PyTorch's best. "
        'warm-up s: compilation and warm-up steps. peak GiB: ' +
        ('device peak allocated.' if gpu else 'process peak RSS above its RSS after imports.') +
        (' MFU: n/a without a known peak (--peak_tflops).' if not gpu else ''))
  if args.output:
    with open(args.output, 'w') as f:
      json.dump({'command': ' '.join([os.path.basename(sys.executable)] + sys.argv),
                 'device': device, 'backend': probe['backend'],
                 'flops_per_image': flops, 'steps': args.steps, 'warmup': args.warmup,
                 'rounds': args.rounds, 'fp32_precision': args.fp32_precision,
                 'rows': rows, 'table': table}, f, indent=2, default=str)
  return 0 if all('error' not in r for r in rows) else 1


if __name__ == '__main__':
  sys.exit(main())
