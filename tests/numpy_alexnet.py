"""An independent float64 NumPy AlexNet (section 3), the reference for the tests.

Written from the paper, not from alexnet_jax.models: im2col convolution with
groups, ReLU, the paper's LRN as its printed sum, 3/2 max pooling, (h, w, c)
flatten, dense layers. Parameters use the Flax layout (HWIO kernels, conv2/4/5
in feature-group layout: output maps [g*Cout/G, (g+1)*Cout/G) read input maps
[g*Cin/G, (g+1)*Cin/G)).
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def conv2d(x, kernel, bias, stride=1, padding=0, groups=1):
  """(B, H, W, Cin) * (kh, kw, Cin/G, Cout) -> (B, Ho, Wo, Cout), as im2col + matmul."""
  x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  kh, kw, cin_g, cout = kernel.shape
  # (B, Ho, Wo, C, kh, kw) -> (B, Ho, Wo, kh, kw, C): the kernel's (kh, kw, cin) order.
  patches = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
  patches = patches.transpose(0, 1, 2, 4, 5, 3)
  cout_g = cout // groups
  outs = []
  for g in range(groups):
    p = patches[..., g * cin_g:(g + 1) * cin_g].reshape(-1, kh * kw * cin_g)
    w = kernel[..., g * cout_g:(g + 1) * cout_g].reshape(-1, cout_g)
    outs.append((p @ w).reshape(*patches.shape[:3], cout_g))
  return np.concatenate(outs, axis=-1) + bias


def relu(x):
  return np.maximum(x, 0.0)


def lrn(a, n=5, k=2.0, alpha=1e-4, beta=0.75, groups=1):
  """Section 3.3, literally: b_i = a_i / (k + alpha sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta.

  ``groups`` > 1 applies the formula to each contiguous block of N/groups maps
  on its own (windows stop at the tower boundary).
  """
  if groups > 1:
    return np.concatenate(
        [lrn(t, n, k, alpha, beta) for t in np.split(a, groups, axis=-1)], axis=-1)
  big_n = a.shape[-1]
  b = np.empty_like(a)
  for i in range(big_n):
    s = 0.0
    for j in range(max(0, i - n // 2), min(big_n - 1, i + n // 2) + 1):
      s = s + a[..., j] ** 2
    b[..., i] = a[..., i] / (k + alpha * s) ** beta
  return b


def max_pool(x, window=3, stride=2):
  """Unpadded max pooling over H and W of (B, H, W, C)."""
  win = sliding_window_view(x, (window, window), axis=(1, 2))[:, ::stride, ::stride]
  return win.max(axis=(-2, -1))


def dense(x, p):
  return x @ p['kernel'] + p['bias']


def alexnet(params, images, conv1_padding=0, towers=2, lrn_kwargs=None, lrn_per_tower=True):
  """Logits of the paper's AlexNet in eval mode (no dropout), float64.

  Args:
    params: Flax ``variables['params']`` of ``AlexNet(towers=towers)``.
    images: (B, H, W, 3).
    conv1_padding: 0 for 227 inputs, 2 for 224 inputs.
    towers: the G of conv2, conv4, conv5.
    lrn_kwargs: overrides for :func:`lrn`.
    lrn_per_tower: normalize each tower's maps on their own (the paper's GPUs
      communicated only in conv3 and the FC layers, section 3.2).
  """
  p = {name: {k: np.asarray(v, np.float64) for k, v in layer.items()}
       for name, layer in params.items()}
  norm = lambda x: lrn(x, **{'groups': towers if lrn_per_tower else 1, **(lrn_kwargs or {})})
  x = np.asarray(images, np.float64)
  x = relu(conv2d(x, **p['conv1'], stride=4, padding=conv1_padding))  # Section 3.5 order:
  x = max_pool(norm(x))                                               # ReLU -> LRN -> pool.
  x = relu(conv2d(x, **p['conv2'], padding=2, groups=towers))
  x = max_pool(norm(x))
  x = relu(conv2d(x, **p['conv3'], padding=1))
  x = relu(conv2d(x, **p['conv4'], padding=1, groups=towers))
  x = relu(conv2d(x, **p['conv5'], padding=1, groups=towers))
  x = max_pool(x)
  x = x.reshape(x.shape[0], -1)  # (h, w, c) order, as the Flax model flattens.
  x = relu(dense(x, p['fc6']))
  x = relu(dense(x, p['fc7']))
  return dense(x, p['fc8'])
