"""The paper's AlexNet (section 3) in PyTorch, equal to alexnet_jax.models.AlexNet.

A peer implementation for side-by-side checks (tests/test_models_torch.py) and
speed comparisons (benchmarks/). It needs only torch and NumPy (no JAX), so a
PyTorch benchmark does not load JAX:

  from benchmarks.torch_alexnet import torch_alexnet, copy_flax_params_to_torch
  # (or `from torch_alexnet import ...` when run as `python benchmarks/x.py`)
  net = torch_alexnet(flax_model)            # or torch_alexnet(towers=2, input_size=227)
  copy_flax_params_to_torch(variables['params'], net)
  logits = net(images.transpose(0, 3, 1, 2))  # NCHW float32

The same layers as the Flax model: conv1 (stride 4; padding 0 for 227 inputs, 2
for 224), conv2/conv4/conv5 with ``groups=towers``, ReLU -> LRN -> 3/2 max pool
after conv1 and conv2, max pool after conv5, dropout on the outputs of fc6 and
fc7. Two conventions differ from the Flax model and are converted:

- LRN: ``nn.LocalResponseNorm`` divides alpha by n, so the paper's alpha = 1e-4
  is passed as alpha * n = 5e-4 (section 3.3).
- Layout: NCHW, so ``torch.flatten`` feeds fc6 in (c, h, w) order where the
  Flax model flattens (h, w, c); ``copy_flax_params_to_torch`` permutes fc6's
  rows. Conv kernels go HWIO -> OIHW; grouped kernels need no reordering (both
  frameworks give output group g the input maps of group g).

Parameter initialization is PyTorch's default; copy the Flax parameters over.
"""

import math
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from alexnet_jax import convert  # NumPy layout functions only (no JAX).

# Fields of alexnet_jax.models.AlexNet that change the network (not lrn_impl,
# grouped_conv_impl or dtypes: those only choose how XLA computes it).
ALEXNET_FIELDS = ('num_classes', 'towers', 'conv_features', 'fc_features',
                 'input_size', 'conv1_padding', 'lrn', 'lrn_depth_radius',
                 'lrn_bias', 'lrn_alpha', 'lrn_beta', 'lrn_per_tower',
                 'pool_window', 'pool_stride', 'activation', 'dropout_rate',
                 'remove_conv')


class TorchAlexNet(nn.Module):
  """AlexNet on (B, 3, H, W) images; arguments are those of the Flax AlexNet."""

  def __init__(self, num_classes: int = 1000, towers: int = 2,
               conv_features: Sequence[int] = (96, 256, 384, 384, 256),
               fc_features: int = 4096, input_size: int = 227,
               conv1_padding=None, lrn: bool = True, lrn_depth_radius: int = 2,
               lrn_bias: float = 2.0, lrn_alpha: float = 1e-4,
               lrn_beta: float = 0.75, lrn_per_tower: bool = True,
               pool_window: int = 3, pool_stride: int = 2,
               activation: str = 'relu', dropout_rate: float = 0.5,
               remove_conv: int = 0):
    super().__init__()
    if remove_conv not in (0, 3, 4, 5):
      raise ValueError(f'remove_conv must be 0, 3, 4 or 5, got {remove_conv}.')
    if conv1_padding is None:
      conv1_padding = 2 if input_size == 224 else 0
    self.act = {'relu': F.relu, 'tanh': torch.tanh}[activation]
    size = 2 * lrn_depth_radius + 1
    # Section 3.3: torch divides alpha by n; the paper does not.
    self.norm = (nn.LocalResponseNorm(size, alpha=lrn_alpha * size, beta=lrn_beta,
                                      k=lrn_bias) if lrn else nn.Identity())
    self.lrn_groups = towers if lrn_per_tower else 1
    self.pool = nn.MaxPool2d(pool_window, pool_stride)
    self.dropout = nn.Dropout(dropout_rate)
    c1, c2, c3, c4, c5 = conv_features
    self.conv1 = nn.Conv2d(3, c1, 11, stride=4, padding=conv1_padding)
    self.conv2 = nn.Conv2d(c1, c2, 5, padding=2, groups=towers)
    cin = c2
    self.convs = []  # conv3..conv5, those not removed (section 7 ablation).
    for i, (cout, groups) in enumerate(((c3, 1), (c4, towers), (c5, towers)), 3):
      if i != remove_conv:
        setattr(self, f'conv{i}', nn.Conv2d(cin, cout, 3, padding=1, groups=groups))
        self.convs.append(f'conv{i}')
        cin = cout
    # Spatial size at pool5: conv1, then three pools (conv2..5 keep the size).
    hw = (input_size + 2 * conv1_padding - 11) // 4 + 1
    for _ in range(3):
      hw = (hw - pool_window) // pool_stride + 1
    self.pool5_shape = (cin, hw, hw)  # (C, H, W)
    self.fc6 = nn.Linear(math.prod(self.pool5_shape), fc_features)
    self.fc7 = nn.Linear(fc_features, fc_features)
    self.fc8 = nn.Linear(fc_features, num_classes)

  def _lrn(self, x: torch.Tensor) -> torch.Tensor:
    if self.lrn_groups == 1:
      return self.norm(x)
    return torch.cat([self.norm(t) for t in x.chunk(self.lrn_groups, dim=1)], dim=1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.pool(self._lrn(self.act(self.conv1(x))))  # ReLU -> LRN -> pool.
    x = self.pool(self._lrn(self.act(self.conv2(x))))
    for name in self.convs:
      x = self.act(getattr(self, name)(x))
    x = self.pool(x)                                   # (B, 256, 6, 6)
    x = torch.flatten(x, 1)                            # (c, h, w) order.
    x = self.dropout(self.act(self.fc6(x)))
    x = self.dropout(self.act(self.fc7(x)))
    return self.fc8(x)


def torch_alexnet(flax_model=None, **kwargs) -> TorchAlexNet:
  """A TorchAlexNet with the fields of ``flax_model`` (an alexnet_jax AlexNet), if
  given, overridden by ``kwargs``."""
  fields = {}
  if flax_model is not None:
    fields = {f: getattr(flax_model, f) for f in ALEXNET_FIELDS if hasattr(flax_model, f)}
  fields.update(kwargs)
  return TorchAlexNet(**fields)


@torch.no_grad()
def copy_flax_params_to_torch(params: Mapping, net: TorchAlexNet) -> TorchAlexNet:
  """Copies Flax ``variables['params']`` of the matching AlexNet into ``net``.

  Conv kernels (kh, kw, Cin/G, Cout) -> (Cout, Cin/G, kh, kw); dense kernels
  (in, out) -> (out, in); fc6's inputs reordered from (h, w, c) to (c, h, w)
  (alexnet_jax.convert.to_nchw, the inverse of the weight import).
  Returns ``net``.
  """
  copied = set()
  for name, (weight, bias) in convert.to_nchw(params, net.pool5_shape).items():
    module = getattr(net, name)
    if tuple(module.weight.shape) != weight.shape:
      raise ValueError(f'{name}: torch weight {tuple(module.weight.shape)} vs '
                       f'Flax kernel {np.shape(params[name]["kernel"])}.')
    module.weight.copy_(torch.from_numpy(weight))
    module.bias.copy_(torch.from_numpy(bias))
    copied |= {f'{name}.weight', f'{name}.bias'}
  missing = sorted(set(dict(net.named_parameters())) - copied)
  if missing:
    raise ValueError(f'No Flax parameters for {missing}.')
  return net
