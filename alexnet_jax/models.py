"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012, section 3) in Flax linen.

Layers are named as the paper names them (conv1 ... conv5, fc6 ... fc8), so
checkpoints, logs and summaries speak the paper's language. Every choice the
paper makes is a field, because each one is an ablation the paper reports or
implies (section 3.3-3.4, 4.2, table notes); its default is the value the model
runs with (the one place for it): the paper's where the paper states one, but
for bias_init, input_size, lrn_per_tower and dropout_scaling, whose comments
say why; each default that is not the paper's letter is in the README's table
"Where the defaults depart from the paper", with the switch that restores it.
Configs override
fields (config.model); this module imports none of them.

Layout is NHWC throughout. Shapes in comments are for the paper's model with
227x227 inputs and 1000 classes.

Two towers ("two GPUs", section 3.2): conv2, conv4 and conv5 are grouped
convolutions, each tower sees only its own half of the maps; conv3 and the FC
layers see both. Each grouped layer is stored as ONE kernel in
``feature_group_count`` layout, e.g. conv2's kernel is (5, 5, 48, 256): output
maps 0..127 are tower 1 and read input maps 0..47, maps 128..255 are tower 2.
The same parameters therefore run on one device or split over two
(``alexnet_jax.parallel``).
"""

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Array = jax.Array

# --------------------------------------------------------------------------
# Local response normalization (section 3.3)
# --------------------------------------------------------------------------


def _resolve_impl(impl: str) -> str:
  if impl != 'auto':
    return impl
  # With the power as rsqrt (_neg_pow), reduce_window is the fastest on XLA:CPU
  # too, and in the jitted training step on XLA:CPU the banded matmul's
  # gradients came out ~2e-3 off (../benchmarks/README.md).
  return 'reduce_window'


def _neg_pow(s: Array, beta: float) -> Array:
  """s ** -beta for s > 0; the paper's beta = 0.75 as rsqrt(s) * sqrt(rsqrt(s)),
  which XLA computes and differentiates several times faster than a power."""
  if beta == 0.75:
    r = lax.rsqrt(s)
    return r * jnp.sqrt(r)
  if beta == 0.5:
    return lax.rsqrt(s)
  return s ** (-beta)


def lrn_band(num_channels: int, depth_radius: int, groups: int = 1,
             dtype=jnp.float32) -> np.ndarray:
  """(C, C) 0/1 matrix: band[j, i] = 1 iff channel j is in channel i's window.

  The window is |i - j| <= depth_radius, clipped at the edges of the layer (or of
  each of ``groups`` equal channel blocks, for per-tower normalization).
  """
  idx = np.arange(num_channels)
  band = np.abs(idx[:, None] - idx[None, :]) <= depth_radius
  if groups > 1:
    block = idx // (num_channels // groups)
    band &= block[:, None] == block[None, :]
  return band.astype(dtype)


def local_response_norm(x: Array, depth_radius: int = 2, bias: float = 2.0,
                        alpha: float = 1e-4, beta: float = 0.75, *,
                        groups: int = 1, impl: str = 'auto') -> Array:
  """The paper's local response normalization over the last (channel) axis.

      b[..., i] = a[..., i] / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a[..., j]^2) ** beta

  with n/2 = ``depth_radius``, k = ``bias``. ``alpha`` multiplies the plain sum
  of squares, as in the paper and ``tf.nn.local_response_normalization``; PyTorch
  and Caffe divide alpha by n, so they equal this only with alpha * n.

  Args:
    x: (..., C) activations (after ReLU in AlexNet).
    depth_radius, bias, alpha, beta: n/2, k, alpha, beta of the paper (2, 2, 1e-4, 0.75).
    groups: >1 normalizes within each of ``groups`` contiguous channel blocks
      (the windows stop at tower boundaries, as on the paper's two GPUs).
    impl: 'reduce_window' (a sliding sum over channels), 'matmul' (the same sum
      as a banded (C, C) matmul), or 'auto' (= 'reduce_window').

  Returns:
    Array of x's shape and dtype. Computed in float32 for low-precision inputs.
  """
  impl = _resolve_impl(impl)
  in_dtype = x.dtype
  xf = x.astype(jnp.promote_types(in_dtype, jnp.float32))
  sq = xf * xf
  c = x.shape[-1]
  if impl == 'matmul':
    band = jnp.asarray(lrn_band(c, depth_radius, groups, sq.dtype))
    window_sum = jnp.matmul(sq, band, precision=lax.Precision.HIGHEST)
  elif impl == 'reduce_window':
    if groups > 1:
      sq = sq.reshape(*sq.shape[:-1], groups, c // groups)
    ndim = sq.ndim
    window_sum = lax.reduce_window(
        sq, 0.0, lax.add,
        window_dimensions=(1,) * (ndim - 1) + (2 * depth_radius + 1,),
        window_strides=(1,) * ndim,
        padding=((0, 0),) * (ndim - 1) + ((depth_radius, depth_radius),))
    window_sum = window_sum.reshape(x.shape)
  else:
    raise ValueError(f"Unknown LRN impl {impl!r}; use 'matmul', "
                     "'reduce_window' or 'auto'.")
  scale = _neg_pow(bias + alpha * window_sum, beta)
  return (xf * scale).astype(in_dtype)


# --------------------------------------------------------------------------
# Overlapping max pooling (section 3.4)
# --------------------------------------------------------------------------


def max_pool(x: Array, window: int, stride: int, impl: str = 'auto') -> Array:
  """Unpadded max pooling over H and W of (B, H, W, C).

  impl: 'reduce_window' (flax's nn.max_pool), 'slices' (the maximum of the
  window's strided slices, along W and then along H), or 'auto' ('slices' on
  CPU, where XLA differentiates reduce_window through a scatter ~3x slower;
  'reduce_window' elsewhere). Same values and the same gradient: on ties both
  give it to the first maximum in row-major order, as PyTorch does.
  """
  if impl == 'auto':
    impl = 'slices' if jax.default_backend() == 'cpu' else 'reduce_window'
  if impl == 'reduce_window':
    return nn.max_pool(x, (window, window), (stride, stride), padding='VALID')
  if impl != 'slices':
    raise ValueError(f"Unknown pool impl {impl!r}; use 'slices', 'reduce_window' or 'auto'.")

  def along(x, axis):
    out = (x.shape[axis] - window) // stride + 1
    parts = [lax.slice_in_dim(x, i, i + stride * (out - 1) + 1, stride, axis)
             for i in range(window)]
    # Not jnp.maximum, whose gradient splits ties: the first maximum wins.
    return functools.reduce(lambda m, p: jnp.where(p > m, p, m), parts)

  return along(along(x, 2), 1)


# --------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------

# Section 5: "We initialized the weights in each layer from a zero-mean Gaussian
# distribution with standard deviation 0.01."
paper_init = nn.initializers.normal(stddev=0.01)

# The weight layers in order, as AlexNet.init_std lists their stds.
WEIGHT_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')
# The ReLU layers whose firing fractions AlexNet sows into 'health'.
RELU_LAYERS = WEIGHT_LAYERS[:-1]


def layer_stds(init_std) -> dict:
  """AlexNet.init_std (one std, alone or in a 1-tuple as `--config.model.init_std=0.005`
  gives it, or one per layer of WEIGHT_LAYERS) -> {layer: std}."""
  stds = tuple(init_std) if isinstance(init_std, (tuple, list)) else (init_std,)
  if len(stds) == 1:
    stds *= len(WEIGHT_LAYERS)
  if (len(stds) != len(WEIGHT_LAYERS)
      or not all(isinstance(v, (int, float)) and v > 0 for v in stds)):
    raise ValueError(f'init_std must be one positive std or {len(WEIGHT_LAYERS)} of them '
                     f'({", ".join(WEIGHT_LAYERS)}), got {init_std!r}.')
  return dict(zip(WEIGHT_LAYERS, map(float, stds)))


def firing_fraction(x: Array) -> Array:
  """Fraction of x's units (last axis: a conv layer's channels, an fc layer's
  neurons) that fire, i.e. are > 0 for at least one example and position.

  A ReLU layer at 0 passes no gradient: when no unit fires the layers below
  stop learning (issue 17). x (B, ..., C) -> () float32.
  """
  fired = jnp.any(x > 0, axis=tuple(range(x.ndim - 1)))   # (C,)
  return fired.mean(dtype=jnp.float32)


def sow_firing(module: nn.Module, layer: str, x: Array) -> Array:
  """Sows firing_fraction(x) as ``module``'s 'health' entry 'firing_<layer>'
  (not '<layer>': that is the layer's own scope); returns x. A no-op unless
  the 'health' collection is mutable."""
  module.sow('health', f'firing_{layer}', firing_fraction(x))
  return x


def firing_metrics(health: Any) -> dict:
  """The 'health' collection of ``model.apply(..., mutable=['health'])`` as
  {'firing_conv1': fraction, ...} (empty for a model that sows none)."""
  return {name: values[-1] for name, values in dict(health).get('health', {}).items()}


def tower_maps(x: Array, mesh: Optional[Mesh], axis: str, split: bool) -> Array:
  """Section 3.2 on a device mesh: x's maps (last axis) split or whole.

  ``split=True`` keeps each tower's maps on its own device along mesh ``axis``;
  ``split=False`` puts all maps on every device, i.e. gathers them, which is
  where the paper's GPUs communicated. The batch axis is left to the compiler
  (it follows the input's 'data' sharding). A no-op when ``mesh`` is None.
  """
  if mesh is None:
    return x
  spec = P(P.UNCONSTRAINED, *(None,) * (x.ndim - 2), axis if split else None)
  return lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _grouped_conv(x: Array, kernel: Array, *, groups: int, conv: Callable,
                  impl: str) -> Array:
  if groups == 1:
    return conv(x, kernel)
  if impl == 'feature_group':
    return conv(x, kernel, feature_group_count=groups)
  if impl == 'split':
    xs = jnp.split(x, groups, axis=-1)
    ks = jnp.split(kernel, groups, axis=-1)
    return jnp.concatenate([conv(xi, ki) for xi, ki in zip(xs, ks)], axis=-1)
  raise ValueError(f"Unknown grouped conv impl {impl!r}; use "
                   "'feature_group', 'split' or 'auto'.")


def _on_towers(grouped: Callable, mesh: Mesh, axis: str, groups: int) -> Callable:
  """``grouped`` under shard_map: each device on ``axis`` convolves its own groups."""
  n = mesh.shape[axis]
  if groups % n:
    raise ValueError(f'{groups} towers do not split over the {n}-way {axis!r} mesh axis.')
  maps = P(None, None, None, axis)  # x (B, H, W, Cin), kernel (kh, kw, Cin/G, Cout)
  return jax.shard_map(functools.partial(grouped, groups=groups // n), mesh=mesh,
                       in_specs=(maps, maps), out_specs=maps, axis_names={axis})


class Conv(nn.Module):
  """2-D convolution whose grouped form stores one (kh, kw, Cin/G, Cout) kernel.

  Parameter names and shapes are those of ``flax.linen.Conv`` with
  ``feature_group_count=groups``. ``impl='split'`` runs the groups as separate
  convolutions on channel slices (same parameters, same result; much faster on
  XLA:CPU than ``feature_group_count``, see benchmarks/README.md).

  With ``mesh`` set (section 3.2, ``alexnet_jax.parallel``), the kernel's output
  maps are split over ``tower_axis``: a grouped layer runs under ``shard_map``
  on each device's own groups, with no communication; an ungrouped layer reads
  all input maps (gathered) and writes its device's share of the output maps.
  """
  features: int
  kernel_size: int
  strides: int = 1
  padding: int = 0
  groups: int = 1
  impl: str = 'auto'
  bias_value: float = 0.0
  kernel_init: Callable = paper_init
  mesh: Optional[Mesh] = None
  tower_axis: str = 'model'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cin = x.shape[-1]
    if cin % self.groups or self.features % self.groups:
      raise ValueError(f'{self.name}: channels {cin}->{self.features} do not '
                       f'divide into {self.groups} groups.')
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init,
                        (k, k, cin // self.groups, self.features), self.param_dtype)
    bias = self.param('bias', nn.initializers.constant(self.bias_value),
                      (self.features,), self.param_dtype)
    x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    conv = functools.partial(
        lax.conv_general_dilated, window_strides=(self.strides,) * 2,
        padding=((self.padding,) * 2,) * 2,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    impl = self.impl
    if impl == 'auto':
      impl = 'split' if jax.default_backend() == 'cpu' else 'feature_group'
    grouped = functools.partial(_grouped_conv, conv=conv, impl=impl)
    if self.mesh is None:
      y = grouped(x, kernel, groups=self.groups)
    elif self.groups > 1:
      y = _on_towers(grouped, self.mesh, self.tower_axis, self.groups)(x, kernel)
    else:
      y = conv(tower_maps(x, self.mesh, self.tower_axis, split=False), kernel)
    y = tower_maps(y, self.mesh, self.tower_axis, split=True)
    return y + bias


def kernel_initializer(name: str, std: float = 0.01) -> Callable:
  """AlexNet.kernel_init's initializer: 'paper' N(0, std^2) (section 5), 'he'
  N(0, 2/fan_in). Raises ValueError naming the choices."""
  if name == 'paper':
    return nn.initializers.normal(stddev=std)
  if name == 'he':
    return nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
  raise ValueError(f"Unknown kernel_init {name!r}; use 'paper' or 'he'.")


def activation_fn(name: str) -> Callable[[Array], Array]:
  """AlexNet.activation's function: 'relu' (section 3.1) or 'tanh' (figure 1's
  saturating baseline). Raises ValueError naming the choices."""
  try:
    return {'relu': nn.relu, 'tanh': jnp.tanh}[name]
  except KeyError:
    raise ValueError(f"Unknown activation {name!r}; use 'relu' or 'tanh'.") from None


# --------------------------------------------------------------------------
# AlexNet
# --------------------------------------------------------------------------


class AlexNet(nn.Module):
  """The network of section 3 / figure 2. Returns logits (softmax is in the loss).

  Call as ``model.apply(variables, images, train=False)`` on (B, H, W, 3) float
  images; with ``train=True`` pass ``rngs={'dropout': key}``.
  """
  # Section 2: ILSVRC's 1000 categories (fc8's 1000-way softmax, section 3.5).
  num_classes: int = 1000
  # Section 3.2: two towers ("two GPUs"). 1 = the ungrouped one-tower model.
  towers: int = 2
  # Widths of conv1..conv5 and of fc6/fc7 (section 3.5, figure 2).
  conv_features: Sequence[int] = (96, 256, 384, 384, 256)
  fc_features: int = 4096
  # Input geometry (section 3.5 says 224x224x3; 227 is what gives its 55x55
  # conv1 maps unpadded, as Caffe's bvlc_alexnet): 227 crops with no conv1
  # padding, or 224 crops with conv1 padding 2 (torchvision); both give 55x55
  # after conv1. None = derive: 2 for 224 inputs, else 0.
  input_size: int = 227
  conv1_padding: Optional[int] = None
  # Section 3.3: response normalization after ReLU in conv1 and conv2.
  lrn: bool = True
  lrn_depth_radius: int = 2   # n = 5
  lrn_bias: float = 2.0       # k
  lrn_alpha: float = 1e-4
  lrn_beta: float = 0.75
  # Section 3.2: the GPUs "communicate only in certain layers" (conv3 and the FC
  # layers), so each GPU normalized its own maps (cuda-convnet's cmrnorm reads
  # one GPU's layer): True, the windows stop at the tower boundary. False:
  # windows span all N maps of the layer (Caffe's LRNLayer).
  lrn_per_tower: bool = True
  # How LRN is computed (same values): 'reduce_window', 'matmul' or 'auto'.
  lrn_impl: str = 'auto'
  # Section 3.4: overlapping pooling z=3, s=2; z=s=2 is the ablation.
  pool_window: int = 3
  pool_stride: int = 2
  pool_impl: str = 'auto'     # how max pooling is computed (same values)
  # Section 3.1: ReLU; 'tanh' is the saturating baseline of figure 1.
  activation: str = 'relu'
  # Section 4.2: dropout 0.5 on the outputs of fc6 and fc7.
  dropout_rate: float = 0.5
  # Section 4.2 multiplies the outputs by 0.5 "at test time" ('paper': kept
  # units unscaled in training, x (1 - rate) at test). 'inverted': kept units x
  # 1 / (1 - rate) in training, none at test: the same network with fc7's and
  # fc8's kernels halved, not the same SGD steps from one init (docs/paper.md).
  dropout_scaling: str = 'inverted'
  # Section 7: "removing any of the middle layers" costs ~2% top-1.
  # 0 keeps all; 3, 4 or 5 removes that conv layer.
  remove_conv: int = 0
  # Section 5: 'paper' is N(0, std^2) with init_std's std. 'he': N(0,
  # 2/fan_in), a named deviation for narrow or shallow-input variants where 0.01
  # makes the signal vanish (init_std is then unused).
  kernel_init: str = 'paper'
  # Section 5: the std of each weight layer's Gaussian, conv1..conv5, fc6, fc7,
  # fc8 (one float: all of them): 0.01 everywhere. Caffe's bvlc_alexnet
  # (train_val.prototxt): 0.005 in fc6 and fc7, i.e.
  # --config.model.init_std="(0.01,0.01,0.01,0.01,0.01,0.005,0.005,0.01)".
  init_std: Any = (0.01,) * 8
  # Section 5: "We initialized the neuron biases in the second, fourth, and
  # fifth convolutional layers, as well as in the fully-connected hidden layers,
  # with the constant 1"; the other biases are 0. Ours: 0.1, as Caffe's
  # bvlc_alexnet ("found necessary for training, as initialization to 1 gave
  # flat loss", models/bvlc_alexnet/readme.md). Measured here at eps 0.01
  # (docs/init_stability.md), on a 10-class proxy of upscaled 8x8 digits at
  # batch 128 and on 16 real JPEGs at batch 16, not on ImageNet: biases 1 left
  # fc7 dead and the loss at chance. The paper's letter: --config.model.bias_init=1.0.
  bias_init: float = 0.1
  # How grouped convolutions (section 3.2) are computed (same values):
  # 'feature_group', 'split' or 'auto'.
  grouped_conv_impl: str = 'auto'
  # Section 3.2 on a device mesh, set by alexnet_jax.parallel.split_towers:
  # each device along `tower_axis` holds one tower's kernels and maps. None: no
  # sharding annotations (one device, or data parallelism only).
  mesh: Optional[Mesh] = None
  tower_axis: str = 'model'
  # Compute and parameter dtypes (the paper: float32); bfloat16 compute is
  # mixed precision.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _conv1_padding(self) -> int:
    if self.conv1_padding is not None:
      return self.conv1_padding
    return 2 if self.input_size == 224 else 0

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    if x.ndim != 4 or x.shape[1:] != (self.input_size, self.input_size, 3):
      raise ValueError(f'This AlexNet expects (B, {self.input_size}, {self.input_size}, 3) '
                       f'images (input_size={self.input_size}), got {x.shape}.')
    if self.remove_conv not in (0, 3, 4, 5):
      raise ValueError(f'remove_conv must be 0, 3, 4 or 5, got {self.remove_conv}.')
    if self.dropout_scaling not in ('inverted', 'paper'):
      raise ValueError("dropout_scaling must be 'inverted' or 'paper', "
                       f'got {self.dropout_scaling!r}.')
    activation = activation_fn(self.activation)
    g = self.towers
    stds = layer_stds(self.init_std)
    init = lambda name: kernel_initializer(self.kernel_init, stds[name])
    b = self.bias_init

    def act(x, name):  # Section 3.1; its firing fraction for train_step's metrics.
      return sow_firing(self, name, activation(x))

    def dropout(x):  # Section 4.2.
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      return x * (1 - self.dropout_rate) if self.dropout_scaling == 'paper' else x

    def conv(features, kernel_size, *, name, **kw):
      return Conv(features, kernel_size, impl=self.grouped_conv_impl, dtype=self.dtype,
                  param_dtype=self.param_dtype, kernel_init=init(name), mesh=self.mesh,
                  tower_axis=self.tower_axis, name=name, **kw)

    def dense(features, *, name, bias):
      return nn.Dense(features, kernel_init=init(name), dtype=self.dtype,
                      param_dtype=self.param_dtype,
                      bias_init=nn.initializers.constant(bias), name=name)

    split, whole = (functools.partial(tower_maps, mesh=self.mesh, axis=self.tower_axis,
                                      split=s) for s in (True, False))
    lrn = functools.partial(
        local_response_norm, depth_radius=self.lrn_depth_radius,
        bias=self.lrn_bias, alpha=self.lrn_alpha, beta=self.lrn_beta,
        groups=g if self.lrn_per_tower else 1, impl=self.lrn_impl)
    pool = functools.partial(max_pool, window=self.pool_window, stride=self.pool_stride,
                             impl=self.pool_impl)
    c1, c2, c3, c4, c5 = self.conv_features
    # Section 5: biases b = bias_init (the paper: 1) in conv2, conv4, conv5,
    # fc6, fc7 (speeds early learning by giving the ReLUs positive inputs); 0
    # elsewhere.
    # conv1 is not grouped: each tower computes its half of the 96 kernels on
    # the whole image, which is one 96-kernel convolution.
    x = conv(c1, 11, strides=4, padding=self._conv1_padding(), name='conv1')(x)  # (B, 55, 55, 96)
    x = act(x, 'conv1')
    if self.lrn:
      x = lrn(x)
    x = pool(x)                                                      # (B, 27, 27, 96)
    self.sow('intermediates', 'pool1', x)  # For summaries; a no-op unless mutable.
    x = act(conv(c2, 5, padding=2, groups=g, bias_value=b, name='conv2')(x), 'conv2')  # (B, 27, 27, 256)
    if self.lrn:
      x = lrn(x)
    x = pool(x)                                                      # (B, 13, 13, 256)
    self.sow('intermediates', 'pool2', x)
    # conv3 crosses towers: sees all 256 maps (on a mesh, gathered by Conv).
    if self.remove_conv != 3:
      x = act(conv(c3, 3, padding=1, bias_value=0.0, name='conv3')(x), 'conv3')  # (B, 13, 13, 384)
    if self.remove_conv != 4:
      x = act(conv(c4, 3, padding=1, groups=g, bias_value=b, name='conv4')(x), 'conv4')  # (B, 13, 13, 384)
    if self.remove_conv != 5:
      x = act(conv(c5, 3, padding=1, groups=g, bias_value=b, name='conv5')(x), 'conv5')  # (B, 13, 13, 256)
    x = pool(x)                                                      # (B, 6, 6, 256)
    self.sow('intermediates', 'pool5', x)
    # Flatten in NHWC (h, w, c) order; importing NCHW weights (Caffe, PyTorch)
    # permutes fc6's rows accordingly.
    # On a mesh, `whole` gathers both towers' maps (fc6 and fc7 read all units of
    # the layer below) and `split` keeps each tower's 2048 units on its device.
    x = whole(x).reshape(x.shape[0], -1)                             # (B, 9216)
    fc6 = dense(self.fc_features, bias=b, name='fc6')
    x = act(split(fc6(x)), 'fc6')                                    # (B, 4096)
    x = dropout(x)
    fc7 = dense(self.fc_features, bias=b, name='fc7')
    x = act(split(fc7(whole(x))), 'fc7')                             # (B, 4096)
    x = dropout(x)
    # fc8 reads both towers' fc7 units: on a mesh each device sums over its own
    # units (its rows of the kernel) and the partial logits are summed.
    x = whole(dense(self.num_classes, bias=0.0, name='fc8')(x))      # (B, 1000)
    return x.astype(jnp.float32)


# --------------------------------------------------------------------------
# Peers' networks
# --------------------------------------------------------------------------


def adaptive_avg_pool(x: Array, output_size: int) -> Array:
  """torch.nn.AdaptiveAvgPool2d on NHWC: bin i spans [floor(iH/o), ceil((i+1)H/o))."""
  def pool_axis(x, axis):
    n = x.shape[axis]
    parts = []
    for i in range(output_size):
      lo, hi = (i * n) // output_size, -((-(i + 1) * n) // output_size)
      parts.append(lax.slice_in_dim(x, lo, hi, axis=axis).mean(axis=axis, keepdims=True))
    return jnp.concatenate(parts, axis=axis)
  return pool_axis(pool_axis(x, 1), 2)


class TorchvisionAlexNet(nn.Module):
  """torchvision.models.alexnet ("one weird trick", Krizhevsky 2014).

  conv 64-192-384-256-256, conv1 stride 4 padding 2, no LRN, no groups,
  adaptive average pool to 6x6, dropout on the inputs of fc6 and fc7;
  61,100,840 parameters. PyTorch's default init is not reproduced (this preset
  exists to import its weights); the paper's init is used.
  """
  num_classes: int = 1000
  dropout_rate: float = 0.5
  input_size: int = 224
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    conv = functools.partial(Conv, dtype=self.dtype, param_dtype=self.param_dtype)
    dense = functools.partial(nn.Dense, kernel_init=paper_init, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    pool = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2))
    relu = lambda x, name: sow_firing(self, name, nn.relu(x))
    x = pool(relu(conv(64, 11, strides=4, padding=2, name='conv1')(x), 'conv1'))  # (B, 27, 27, 64)
    self.sow('intermediates', 'pool1', x)  # For summaries; a no-op unless mutable.
    x = pool(relu(conv(192, 5, padding=2, name='conv2')(x), 'conv2'))        # (B, 13, 13, 192)
    self.sow('intermediates', 'pool2', x)
    x = relu(conv(384, 3, padding=1, name='conv3')(x), 'conv3')              # (B, 13, 13, 384)
    x = relu(conv(256, 3, padding=1, name='conv4')(x), 'conv4')              # (B, 13, 13, 256)
    x = pool(relu(conv(256, 3, padding=1, name='conv5')(x), 'conv5'))        # (B, 6, 6, 256)
    self.sow('intermediates', 'pool5', x)
    x = adaptive_avg_pool(x, 6).reshape(x.shape[0], -1)                      # (B, 9216)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = relu(dense(4096, name='fc6')(x), 'fc6')
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = relu(dense(4096, name='fc7')(x), 'fc7')
    x = dense(self.num_classes, name='fc8')(x)
    return x.astype(jnp.float32)


class Figure1Net(nn.Module):
  """The CIFAR-10 CNN of figure 1 (ReLU vs tanh), as cuda-convnet's layers-80sec.cfg.

  The paper calls it "a four-layer convolutional neural network" and prints no
  layers; figure 1 was made with cuda-convnet, whose example-layers/
  layers-80sec.cfg ("26% error on CIFAR-10 in 80 seconds") is this net:

    conv1  32 5x5, pad 2, initW 1e-4  -> max pool 3/2 -> act   (B, 16, 16, 32)
    conv2  32 5x5, pad 2, initW 0.01  -> act -> avg pool 3/2   (B, 8, 8, 32)
    conv3  64 5x5, pad 2, initW 0.01  -> act -> avg pool 3/2   (B, 4, 4, 64)
    fc4    64 units,      initW 0.1   -> act                   (B, 64)
    fc5    classes,       initW 0.1                            (B, 10)

  Five weight layers (3 conv + 2 fc): "four-layer" is ambiguous (it may count
  the hidden layers conv1-conv3 + fc4, or describe a variant without the 64-unit
  layer); we follow the file. initW is the std of a zero-mean Gaussian; biases
  start at 0 (cuda-convnet's default). The 1e-4 conv1 init keeps the tanh units
  far from saturation at the start on 0-255 mean-subtracted pixels. No
  response normalization and no regularization (figure 1's caption; the file's
  layer-params give wc, which configs/cifar10.py leaves at 0). Pooling windows
  at the right and bottom edge are clipped (cuda-convnet's outputsX = 16 for 32
  inputs); the average pool divides by the full 3x3 window. Max pooling then
  the activation (the file's order) equals the activation then max pooling,
  since both activations are increasing.
  """
  num_classes: int = 10
  activation: str = 'relu'
  input_size: int = 32
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    del train  # No dropout: figure 1 uses no regularization.
    act = lambda x, name: sow_firing(self, name, activation_fn(self.activation)(x))
    normal = nn.initializers.normal
    conv = functools.partial(Conv, kernel_size=5, padding=2, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    pool_kw = dict(window_shape=(3, 3), strides=(2, 2), padding=((0, 1), (0, 1)))
    x = nn.max_pool(act(conv(32, kernel_init=normal(1e-4), name='conv1')(x), 'conv1'), **pool_kw)  # (B, 16, 16, 32)
    self.sow('intermediates', 'pool1', x)  # For summaries; a no-op unless mutable.
    x = nn.avg_pool(act(conv(32, kernel_init=normal(1e-2), name='conv2')(x), 'conv2'), **pool_kw)  # (B, 8, 8, 32)
    self.sow('intermediates', 'pool2', x)
    x = nn.avg_pool(act(conv(64, kernel_init=normal(1e-2), name='conv3')(x), 'conv3'), **pool_kw)  # (B, 4, 4, 64)
    self.sow('intermediates', 'pool3', x)
    x = x.reshape(x.shape[0], -1)                                                     # (B, 1024)
    x = act(dense(64, kernel_init=normal(0.1), name='fc4')(x), 'fc4')                 # (B, 64)
    x = dense(self.num_classes, kernel_init=normal(0.1), name='fc5')(x)               # (B, 10)
    return x.astype(jnp.float32)


# --------------------------------------------------------------------------
# Presets and construction from config
# --------------------------------------------------------------------------

PRESETS = {
    # The paper's model (section 3), two towers, 227 crops.
    'alexnet': AlexNet,
    # A tiny AlexNet with the same topology, for tests and CPU smoke runs.
    'alexnet_tiny': functools.partial(AlexNet, conv_features=(8, 16, 24, 24, 16),
                                      fc_features=64),
    'torchvision': TorchvisionAlexNet,
    'figure1': Figure1Net,
}

# config.model.dtype / param_dtype names.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def resolve_model_kwargs(name: str, kwargs: dict) -> dict:
  """config.model's keys for preset `name`: those set (not None) as they are.

  None means "the model's own default" (configs declare the fields they leave
  to the model as typed placeholders, so that the command line can set them).
  A set key that the preset fixes to another value, or that it does not take,
  is refused with the keys named.
  """
  if name not in PRESETS:
    raise ValueError(f'Unknown model {name!r}; choose one of {sorted(PRESETS)}.')
  preset = PRESETS[name]
  cls = getattr(preset, 'func', preset)
  fixed = getattr(preset, 'keywords', {})
  fields = {f for f in cls.__dataclass_fields__ if f not in ('parent', 'name')}
  given = {k: v for k, v in kwargs.items() if v is not None}
  norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
  conflicts = [f'{k}={v!r} (preset: {fixed[k]!r})' for k, v in given.items()
               if k in fixed and norm(v) != norm(fixed[k])]
  if conflicts:
    raise ValueError(
        f'config.model sets {", ".join(conflicts)}, which preset {name!r} fixes. '
        f'Set them to the preset\'s values, or use --config.model.name=alexnet with yours.')
  unknown = sorted(k for k in given if k not in fields)
  if unknown:
    raise ValueError(f'config.model has keys {unknown} that model {name!r} does '
                     f'not take; its fields are {sorted(fields)}.')
  return given


def create_model(model_config) -> nn.Module:
  """Builds a model from ``config.model`` (a ConfigDict or dict).

  ``name`` picks a preset; every other key is a field of that module, so any
  field is overridable from the command line (``--config.model.lrn=False``).
  A key set to None is left to the module's own default.
  """
  kwargs = dict(model_config)
  name = kwargs.pop('name', 'alexnet')
  kwargs = resolve_model_kwargs(name, kwargs)
  if 'init_std' in kwargs:
    layer_stds(kwargs['init_std'])  # Refused here, before any parameter is drawn.
  for key in ('dtype', 'param_dtype'):
    if isinstance(kwargs.get(key), str):
      kwargs[key] = DTYPES[kwargs[key]]
  return PRESETS[name](**kwargs)


def recorded_config(model_config, model: nn.Module) -> dict:
  """``config.model`` as the model ran: each key left to the module's default
  (None) gets the module's value, so a run's config.json says what ran even
  after a default here changes (the tools read it: predict.load_config)."""
  names = {v: k for k, v in DTYPES.items()}
  out = dict(model_config)
  for key, value in out.items():
    if value is None and hasattr(model, key):
      ran = getattr(model, key)
      out[key] = names.get(ran, ran)
  return out


def input_shape(model: nn.Module) -> tuple:
  """(H, W, 3) of the images ``model`` expects."""
  return (model.input_size, model.input_size, 3)
