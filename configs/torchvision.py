r"""torchvision's AlexNet ("one weird trick", Krizhevsky 2014) on ILSVRC-2012.

For weights imported from PyTorch (alexnet_jax.convert) and for training this
variant:

  python -m alexnet_jax.convert --config=configs/torchvision.py \
      --source=torchvision --input=alexnet-owt-7be5be79.pth --workdir=$WORKDIR
  python -m alexnet_jax.predict --workdir=$WORKDIR image.jpg

(`--config.model.name=torchvision` on configs/ilsvrc.py builds the same network
on 227 crops; this config also sets torchvision's input.)

Input as torchvision's ImageNet recipe: shorter side 256, centre 224 crop,
antialiased bilinear resampling (PIL), then Normalize: per-channel mean
(0.485, 0.456, 0.406) * 255 subtracted and each channel divided by its own
std (0.229, 0.224, 0.225) * 255 (a per-channel config.input.pixel_scale). On
a 256x256 image (no resampling) predict's probabilities equal torchvision's
eval transform and forward to < 1e-5 (tests/test_import_parity.py).

Deviations from configs/ilsvrc.py: the model (no LRN, no towers, 64-192-384-
256-256 maps) and the input above.
"""

import ml_collections

from configs import ilsvrc


def get_config(arg=None):
  config = ilsvrc.get_config(arg)
  num_classes = config.model.num_classes
  # models.TorchvisionAlexNet's keys; None = the model's own default.
  config.model = config.model.__class__()
  config.model.name = 'torchvision'
  config.model.num_classes = num_classes
  config.model.input_size = 224
  config.model.dropout_rate = ml_collections.config_dict.placeholder(float)
  config.model.dtype = ml_collections.config_dict.placeholder(str)

  config.input.antialias = True
  config.input.mean = 'channel'
  # torchvision's Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
  # on [0, 1] pixels, as (pixel - 255 mean) * 1 / (255 std) on 0..255 pixels.
  config.input.published_mean_rgb = tuple(255 * m for m in (0.485, 0.456, 0.406))
  with config.input.ignore_type():  # a float in configs/ilsvrc.py
    config.input.pixel_scale = tuple(1 / (255 * s) for s in (0.229, 0.224, 0.225))
  return config
