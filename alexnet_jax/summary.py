r"""Per-layer table of a model: output shape, parameters, multiply-adds (section 3).

  python -m alexnet_jax.summary --config=configs/ilsvrc.py
  python -m alexnet_jax.summary --config=configs/ilsvrc.py --config.model.towers=1

Shapes come from ``jax.eval_shape`` (nothing is initialized or computed), so
this runs in seconds on any machine. Multiply-adds (MACs) are counted for conv
and dense layers only, per image: a conv with a (kh, kw, Cin/G, Cout) kernel
costs Hout * Wout * kh * kw * Cin/G * Cout, a dense layer in * out. ReLU, LRN,
pooling, dropout and bias adds are left out (<1% of the total).

Training FLOPs per image are 3 x 2 x MACs: a multiply-add is 2 FLOPs, and the
backward pass costs twice the forward (input and weight gradients). This is the
usual convention for model-FLOPs utilization (MFU); it counts conv1's input
gradient, which training does not need.
"""

import dataclasses
import math
from typing import Sequence

from absl import flags
import jax
import jax.numpy as jnp

from alexnet_jax import cli
from alexnet_jax import models

def define_flags():
  cli.config_flag('configs/ilsvrc.py', 'Config file; its `model` field is summarized.')


@dataclasses.dataclass(frozen=True)
class Layer:
  """One row of the table: a parameterized layer or a pooling output."""
  name: str
  shape: tuple  # Output shape of one image, e.g. (55, 55, 96) or (4096,).
  params: int
  macs: int     # Multiply-adds per image.


def _abstract_variables(model, batch_size: int = 1):
  """(variables, layer names in call order), as shapes only."""
  order = []

  def init():
    x = jnp.zeros((batch_size, *models.input_shape(model)), model.dtype)
    variables = model.init(jax.random.key(0), x, train=False,
                           capture_intermediates=True)
    # Dict order is call order here; eval_shape's output pytree sorts the keys.
    order.extend(variables['intermediates'])
    return variables

  variables = jax.eval_shape(init)
  return variables, order


def _size(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def layer_table(model) -> list[Layer]:
  """Rows for the input, every conv/dense layer and every sown pool output."""
  variables, order = _abstract_variables(model)
  params, inter = variables['params'], variables['intermediates']
  rows = [Layer('input', tuple(models.input_shape(model)), 0, 0)]
  for name in order:
    if name == '__call__':  # The model's own output (= the last layer's).
      continue
    value = inter[name]
    if isinstance(value, dict):  # A submodule's captured __call__ output.
      if name not in params:     # Parameter-free modules (dropout).
        continue
      (out,) = value['__call__']
      kernel = params[name]['kernel'].shape
      if len(kernel) == 4:    # (kh, kw, Cin/G, Cout) conv: per output pixel.
        macs = math.prod(out.shape[1:-1]) * math.prod(kernel)
      elif len(kernel) == 2:  # (in, out) dense.
        macs = math.prod(kernel)
      else:
        raise ValueError(f'{name}: cannot count MACs of kernel {kernel}.')
      rows.append(Layer(name, tuple(out.shape[1:]), _size(params[name]), macs))
    else:  # self.sow('intermediates', 'poolN', x): a tuple of arrays.
      rows.append(Layer(name, tuple(value[-1].shape[1:]), 0, 0))
  total = _size(params)
  if sum(r.params for r in rows) != total:
    raise ValueError('Some parameters belong to no row of the table.')
  return rows


def param_count(model) -> int:
  """Number of parameters (60,965,224 for the paper's two-tower model)."""
  return sum(r.params for r in layer_table(model))


def macs_per_image(model) -> int:
  """Forward multiply-adds per image of the conv and dense layers."""
  return sum(r.macs for r in layer_table(model))


def train_flops_per_image(model) -> int:
  """Training FLOPs per image: 3 (forward + backward) x 2 (FLOPs per MAC) x MACs."""
  return 3 * 2 * macs_per_image(model)


def format_table(rows: Sequence[Layer]) -> str:
  """The table as text, with totals."""
  shape = lambda s: 'x'.join(str(d) for d in s)
  header = f"{'layer':<8}{'output':>14}{'params':>14}{'MACs/image':>16}"
  lines = [header, '-' * len(header)]
  for r in rows:
    lines.append(f'{r.name:<8}{shape(r.shape):>14}{r.params:>14,}{r.macs:>16,}')
  params, macs = sum(r.params for r in rows), sum(r.macs for r in rows)
  lines += ['-' * len(header), f"{'total':<8}{'':>14}{params:>14,}{macs:>16,}", '',
            f'parameters                  {params:>16,}',
            f'multiply-adds / image       {macs:>16,}',
            f'training FLOPs / image      {3 * 2 * macs:>16,}  (3 x 2 x MACs)']
  return '\n'.join(lines)


def main(argv):
  del argv
  config = flags.FLAGS.config
  model = models.create_model(config.model)
  print(f'{config.model.name}: {type(model).__name__}, input '
        f"{'x'.join(map(str, models.input_shape(model)))}")
  print(format_table(layer_table(model)))


if __name__ == '__main__':
  cli.run(main, define_flags, config_default='configs/ilsvrc.py')
