r"""Weight import: PyTorch / Caffe / cuda-convnet (NCHW) weights -> a workdir.

  python -m alexnet_jax.convert --config=configs/torchvision.py \
      --source=torchvision --input=alexnet-owt-7be5be79.pth --workdir=W
  python -m alexnet_jax.convert --config=configs/ilsvrc.py \
      --source=nchw --input=weights.npz [--bgr] --workdir=W

writes W/config.json, W/class_names.json (--class_names, else the ids) and a
step-0 checkpoint in the layout alexnet_jax.train writes, so
`alexnet_jax.predict --workdir=W`, `alexnet_jax.ensemble --workdirs=W` (an
evaluation) and `--config.init_from=W` (fine-tuning) accept it.

Sources:
  torchvision  a `torchvision.models.alexnet` state_dict (.pth): features.{0,3,6,8,10}
               -> conv1..conv5, classifier.{1,4,6} -> fc6..fc8 of TorchvisionAlexNet.
  nchw         an .npz of `<layer>.weight` / `<layer>.bias` arrays for conv1..conv5,
               fc6..fc8 of the paper's AlexNet in Caffe's layout: conv weights OIHW
               (Cout, Cin/G, kh, kw), grouped layers with output group g reading
               input group g (Caffe's `group: 2`, cuda-convnet's `groups=2`), dense
               weights (out, in) with fc6's inputs in (c, h, w) order. cuda-convnet
               keeps filters as (Cin/G * kh * kw, Cout) matrices: reshape them to
               (Cin/G, kh, kw, Cout) and transpose to OIHW first. Caffe models read
               BGR images: --bgr reverses conv1's input channels for our RGB input.

The layout functions are NumPy only (benchmarks/torch_alexnet.py uses them
without JAX). Flax: conv kernels HWIO, dense kernels (in, out), flatten in
(h, w, c) order (models.AlexNet).
"""

import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from alexnet_jax import cli

# torchvision.models.alexnet's state_dict prefixes -> our layer names.
TORCHVISION_LAYERS = {'features.0': 'conv1', 'features.3': 'conv2', 'features.6': 'conv3',
                      'features.8': 'conv4', 'features.10': 'conv5', 'classifier.1': 'fc6',
                      'classifier.4': 'fc7', 'classifier.6': 'fc8'}


@cli.user_error
class MissingPackageError(RuntimeError):
  """An optional package a source needs is not installed; the message says how."""


# --------------------------------------------------------------------------
# Layouts (NumPy)
# --------------------------------------------------------------------------


def conv_from_oihw(weight: np.ndarray) -> np.ndarray:
  """(Cout, Cin/G, kh, kw) -> (kh, kw, Cin/G, Cout). Groups need no reordering:
  in both layouts output group g is the g-th block of Cout and reads input group g."""
  return np.asarray(weight).transpose(2, 3, 1, 0)


def conv_to_oihw(kernel: np.ndarray) -> np.ndarray:
  return np.asarray(kernel).transpose(3, 2, 0, 1)


def dense_from_nchw(weight: np.ndarray, chw: Optional[Sequence[int]] = None) -> np.ndarray:
  """(out, in) -> (in, out); with `chw` = (C, H, W) of the maps below (fc6), the
  rows go from NCHW's (c, h, w) flatten order to our (h, w, c) order."""
  kernel = np.asarray(weight).T
  if chw is not None:
    c, h, w = chw
    kernel = kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(c * h * w, -1)
  return kernel


def dense_to_nchw(kernel: np.ndarray, chw: Optional[Sequence[int]] = None) -> np.ndarray:
  """The inverse of `dense_from_nchw`: (in, out) -> (out, in)."""
  kernel = np.asarray(kernel)
  if chw is not None:
    c, h, w = chw
    kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
  return kernel.T


def fc6_chw(layers: Mapping[str, Any], fc6_inputs: int) -> tuple:
  """(C, H, W) of the square maps fc6 reads, C = the last conv's output maps."""
  last = max((n for n in layers if n.startswith('conv')), key=lambda n: int(n[4:]))
  c = np.shape(layers[last][0])[0] if np.ndim(layers[last][0]) == 4 else np.shape(layers[last][0])[-1]
  hw = math.isqrt(fc6_inputs // c)
  if c * hw * hw != fc6_inputs:
    raise ValueError(f'fc6 reads {fc6_inputs} inputs, not {c} square maps of {last}.')
  return c, hw, hw


def from_nchw(layers: Mapping[str, tuple], chw: Optional[Sequence[int]] = None) -> dict:
  """{name: (weight, bias)} in NCHW layout (OIHW conv, (out, in) dense) -> Flax params.

  fc6's rows are permuted from the (C, H, W) order `chw` (default: derived).
  """
  if 'fc6' in layers and chw is None:
    chw = fc6_chw(layers, np.shape(layers['fc6'][0])[1])
  params = {}
  for name, (weight, bias) in layers.items():
    if np.ndim(weight) == 4:
      kernel = conv_from_oihw(weight)
    else:
      kernel = dense_from_nchw(weight, chw if name == 'fc6' else None)
    params[name] = {'kernel': np.ascontiguousarray(kernel, np.float32),
                    'bias': np.asarray(bias, np.float32)}
  return params


def to_nchw(params: Mapping[str, Any], chw: Sequence[int]) -> dict:
  """Flax params -> {name: (weight, bias)} in NCHW layout (`chw`: fc6's input maps)."""
  out = {}
  for name, layer in params.items():
    kernel = np.asarray(layer['kernel'], np.float32)
    weight = (conv_to_oihw(kernel) if kernel.ndim == 4
              else dense_to_nchw(kernel, chw if name == 'fc6' else None))
    out[name] = (np.ascontiguousarray(weight), np.asarray(layer['bias'], np.float32))
  return out


def torchvision_params(state_dict: Mapping[str, Any]) -> dict:
  """A torchvision alexnet state_dict (tensors or arrays) -> TorchvisionAlexNet params.

  fc6 reads the (256, 6, 6) output of AdaptiveAvgPool2d((6, 6)).
  """
  arrays = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, 'detach') else v)
            for k, v in state_dict.items()}
  expected = {f'{p}.{s}' for p in TORCHVISION_LAYERS for s in ('weight', 'bias')}
  if set(arrays) != expected:
    raise ValueError('Not a torchvision alexnet state_dict: missing '
                     f'{sorted(expected - set(arrays))}, unexpected {sorted(set(arrays) - expected)}.')
  layers = {name: (arrays[f'{p}.weight'], arrays[f'{p}.bias'])
            for p, name in TORCHVISION_LAYERS.items()}
  return from_nchw(layers, chw=(256, 6, 6))


def nchw_params(arrays: Mapping[str, np.ndarray], bgr: bool = False) -> dict:
  """{'conv1.weight': OIHW, 'conv1.bias': ..., 'fc6.weight': (out, in), ...} (Caffe /
  cuda-convnet layout) -> AlexNet params. bgr: conv1 read BGR images."""
  names = sorted({k.rsplit('.', 1)[0] for k in arrays})
  missing = [f'{n}.{s}' for n in names for s in ('weight', 'bias') if f'{n}.{s}' not in arrays]
  if missing:
    raise ValueError(f'Missing arrays {missing}.')
  layers = {n: (np.asarray(arrays[f'{n}.weight']), np.asarray(arrays[f'{n}.bias']))
            for n in names}
  if bgr:
    w, b = layers['conv1']
    layers['conv1'] = (w[:, ::-1], b)
  return from_nchw(layers)


# --------------------------------------------------------------------------
# A workdir
# --------------------------------------------------------------------------


def write_workdir(workdir: str, config, params: Mapping[str, Any],
                  class_names: Optional[Sequence[str]] = None) -> None:
  """W/config.json, W/class_names.json and a step-0 checkpoint of `params`.

  The checkpoint holds a full train state of `config` (the optimizer's state
  fresh), as alexnet_jax.train writes it; `params` must fit config.model
  exactly (CheckpointMismatchError naming the layers otherwise).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax import models  # pylint: disable=g-import-not-at-top
  from alexnet_jax import optimizer  # pylint: disable=g-import-not-at-top
  from alexnet_jax import steps  # pylint: disable=g-import-not-at-top
  model = models.create_model(config.model)
  config = config.copy_and_resolve_references()  # recorded as train records it:
  config.model.update(models.recorded_config(config.model, model))  # the model's values
  tx = optimizer.make_optimizer(optimizer.Hyper(**config.optimizer),
                              optimizer.Schedule(**config.schedule), 1, 1)
  fresh = jax.eval_shape(lambda: steps.create_train_state(jax.random.key(0), model, tx))
  extra = sorted(set(params) - set(fresh.params))
  if extra:
    raise ckpt_lib.CheckpointMismatchError(
        f'The weights have layers {extra} that model {config.model.name!r} lacks.')
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), fresh.params)
  merged = ckpt_lib.merge_params(zeros, params, (), 'the imported weights')
  state = steps.TrainState(step=np.zeros((), np.int32), params=merged,
                           opt_state=tx.init(merged),
                           plateau={'best': np.float32(np.inf), 'bad_evals': np.int32(0),
                                    'drops': np.int32(0)})
  os.makedirs(workdir, exist_ok=True)
  ckpt = ckpt_lib.Checkpointer(workdir, every_steps=1, keep=1, use_async=False)
  if ckpt.latest_step() is not None:
    raise FileExistsError(f'{workdir} already holds checkpoints; give a new --workdir.')
  ckpt.save(0, state, ckpt_lib.describe(config, merged), force=True)
  ckpt.close()
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  names = list(class_names) if class_names else [str(i) for i in range(config.model.num_classes)]
  if len(names) != config.model.num_classes:
    raise ValueError(f'{len(names)} class names for {config.model.num_classes} classes.')
  with open(os.path.join(workdir, 'class_names.json'), 'w') as f:
    json.dump(names, f)


def load_source(source: str, path: str, bgr: bool = False) -> dict:
  if source == 'torchvision':
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise MissingPackageError(
          f'--source=torchvision reads {path} with PyTorch, which is not installed: '
          'pip install -r requirements-dev.txt (the CPU-only wheel: add --index-url '
          'https://download.pytorch.org/whl/cpu), then rerun.') from None
    state_dict = torch.load(path, map_location='cpu', weights_only=True)
    return torchvision_params(state_dict.get('state_dict', state_dict))
  if source == 'nchw':
    with np.load(path) as f:
      return nchw_params(dict(f), bgr=bgr)
  raise ValueError(f"--source must be 'torchvision' or 'nchw', got {source!r}.")


def main(argv: Sequence[str]) -> None:
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  params = load_source(f.source, f.input, f.bgr)
  names = None
  if f.class_names:
    with open(f.class_names) as fh:
      text = fh.read()
    names = (json.loads(text) if text.lstrip().startswith('[')
             else [line.strip() for line in text.splitlines() if line.strip()])
  write_workdir(f.workdir, f.config, params, names)
  n = sum(int(np.prod(np.shape(x))) for layer in params.values() for x in layer.values())
  print(f'Wrote {f.workdir}: {f.config.model.name} with {n:,} parameters from {f.input} '
        f'({f.source}{", BGR->RGB" if f.bgr else ""}).')


def define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  cli.config_flag(None, 'The config the weights fit (configs/torchvision.py, configs/ilsvrc.py).')
  flags.DEFINE_enum('source', None, ['torchvision', 'nchw'], 'The format of --input.')
  flags.DEFINE_string('input', None, 'A .pth (torchvision) or .npz (nchw) file.')
  flags.DEFINE_bool('bgr', False, 'nchw: conv1 was trained on BGR images (Caffe).')
  flags.DEFINE_string('class_names', None, 'A JSON list or a text file of one name '
                      'per line, in class-id order.')
  cli.workdir_flag('The new workdir to write.', required=True)
  flags.mark_flags_as_required(['config', 'source', 'input'])


if __name__ == '__main__':
  cli.run(main, define_flags, results_only=True, config_default=None)
