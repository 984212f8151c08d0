r"""Caffe's bvlc_alexnet (BVLC model zoo) for imported weights.

  python -m alexnet_jax.convert --config=configs/caffe.py --source=nchw --bgr \
      --input=bvlc_alexnet.npz --workdir=$WORKDIR \
      [--config.input.stats_path=caffe_mean.npz]
  python -m alexnet_jax.predict --workdir=$WORKDIR image.jpg

(docs/tools.md's import table gives the steps from bvlc_alexnet.caffemodel and
imagenet_mean.binaryproto to the two .npz files.) The network is the paper's
two-tower AlexNet (configs/ilsvrc.py) as models/bvlc_alexnet/deploy.prototxt
and train_val.prototxt define it; on a 256x256 image, predict's probabilities
equal a float64 NumPy transcription of those layers to < 1e-5
(tests/test_import_parity.py). The same layers and padding as ours: conv1 11/4
-> relu -> norm -> pool 3/2, conv2 pad 2 group 2 -> relu -> norm -> pool,
conv3 pad 1, conv4 pad 1 group 2, conv5 pad 1 group 2 -> relu -> pool, fc6,
fc7 (relu, dropout 0.5), fc8. Caffe pools in ceil mode, which equals our
floor mode here: 55 -> 27 -> 13 -> 6 are exact ((55 - 3) / 2 + 1 = 27, ...).

Differences from configs/ilsvrc.py (the paper):
- LRN (Caffe's LRNLayer, ACROSS_CHANNELS): b = a / (k + alpha / n * sum a^2)^beta
  with k = 1 and alpha = 1e-4 divided by local_size n = 5, over all maps of the
  layer (Caffe's blob holds both groups' maps; no tower boundary).
- Input: Caffe reads BGR (OpenCV) minus the per-pixel mean image
  (imagenet_mean.binaryproto, 0..255, no std), 227 crops (centre crop at
  (256 - 227) // 2 = 14 in evaluation). `convert --bgr` reverses conv1's input
  channels so the network reads our RGB; the mean image goes in a stats file
  (config.input.stats_path, RGB); without it, that image's per-channel mean.
- Caffe's data were warped to 256x256 (convert_imageset --resize_height=256
  --resize_width=256, OpenCV bilinear); ours rescales the shorter side to 256
  and cuts the central 256x256, which equals it on square images only.
- Training (if one fine-tunes): bvlc_alexnet used no PCA lighting (mirror and
  crops only), so pca_lighting is 0; the rest is configs/ilsvrc.py's recipe.
"""

from configs import ilsvrc


def get_config(arg=None):
  config = ilsvrc.get_config(arg)
  # Caffe's LRNLayer: scale = k + alpha / local_size * sum, k = 1 (the default
  # of LRNParameter), alpha 1e-4, local_size 5, beta 0.75, across all maps.
  config.model.lrn_bias = 1.0
  config.model.lrn_alpha = 1e-4 / 5
  config.model.lrn_per_tower = False
  config.model.input_size = 227          # crop_size: 227, conv1 without padding

  config.input.mean = 'image'            # mean_file: imagenet_mean.binaryproto
  # Without config.input.stats_path: the per-channel mean of Caffe's
  # ilsvrc_2012_mean (BGR 104.00698793, 116.66876762, 122.67891434), as RGB.
  config.input.published_mean_rgb = (122.67891434, 116.66876762, 104.00698793)
  config.input.pixel_scale = 1.0         # no std: raw mean-subtracted 0..255 values
  config.input.antialias = False         # OpenCV INTER_LINEAR
  config.input.pca_lighting = 0.0        # train_val.prototxt: mirror and crops only
  return config
