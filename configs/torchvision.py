r"""torchvision's AlexNet ("one weird trick", Krizhevsky 2014) on ILSVRC-2012.

For weights imported from PyTorch (alexnet_jax.convert) and for training this
variant:

  python -m alexnet_jax.convert --config=configs/torchvision.py \
      --source=torchvision --input=alexnet-owt-7be5be79.pth --workdir=$WORKDIR
  python -m alexnet_jax.predict --workdir=$WORKDIR image.jpg

(`--config.model.name=torchvision` on configs/ilsvrc.py builds the same network
on 227 crops; this config also sets torchvision's input.)

Input as torchvision's ImageNet recipe: shorter side 256, centre 224 crop,
antialiased bilinear resampling (PIL), per-channel mean (0.485, 0.456, 0.406)
* 255 subtracted. torchvision also divides each channel by its own std (0.229,
0.224, 0.225) * 255; ours has one pixel scale, 1 / (0.226 * 255), the mean of
the three, so each channel's input is off by at most 1.3% (0.229 / 0.226).

Deviations from configs/ilsvrc.py: the model (no LRN, no towers, 64-192-384-
256-256 maps) and the input above.
"""

from configs import ilsvrc


def get_config(arg=None):
  config = ilsvrc.get_config(arg)
  num_classes = config.model.num_classes
  config.model = config.model.__class__()
  config.model.name = 'torchvision'
  config.model.num_classes = num_classes
  config.model.input_size = 224
  config.model.dropout_rate = 0.5
  config.model.dtype = 'float32'

  config.input.antialias = True
  config.input.mean = 'channel'
  config.input.published_mean_rgb = (123.675, 116.28, 103.53)
  config.input.pixel_scale = 1 / (0.226 * 255)
  return config
