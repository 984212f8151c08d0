r"""Figure 1: the CIFAR-10 CNN with ReLU vs tanh (tfds downloads CIFAR-10).

One command makes the figure (both runs, the plot, the 25% epochs and their ratio):

  python -m alexnet_jax.figures fig1 --output_dir=$DIR            # CIFAR-10
  python -m alexnet_jax.figures fig1 --data=digits --output_dir=$DIR  # offline stand-in

or one curve at a time:

  python -m alexnet_jax.main --config=configs/cifar10.py --workdir=$WORKDIR/relu \
      --config.input.stats_path=$STATS
  python -m alexnet_jax.main --config=configs/cifar10.py:tanh --workdir=$WORKDIR/tanh \
      --config.input.stats_path=$STATS

with $STATS from `python -m alexnet_jax.stats --config=configs/cifar10.py
--num_images=0 --output=$STATS` (the CIFAR-10 mean image; `figures fig1` makes
it). The arg is comma-separated: `tanh` (else ReLU) and `digits` (scikit-learn
digits upscaled to 32x32 instead of CIFAR-10, no download).

The claim: the ReLU network reaches 25% training error six times faster than
the tanh one. Training error is logged once per epoch as train_top1_error (the
mean over the epoch's batches, as cuda-convnet reports it).

Data: tfds `cifar10` (50,000 train / 10,000 test, ~160 MB), downloaded on
first use; the CIFAR-10 training mean image subtracted from 0-255 pixels, as
cuda-convnet's data provider does. As in figure 1: no regularization (no weight
decay, no dropout, no augmentation). The network (models.Figure1Net) is
cuda-convnet's layers-80sec.cfg; its layer-params-80sec.cfg gives the
optimizer: epsW 0.001, momentum 0.9, batch 128 (its epsB 0.002 for biases and
wc weight decay are not used). The paper tuned each net's learning rate
separately: set --config.optimizer.learning_rate per run.

Hardware and result: see docs/tools.md (Figure 1); on CIFAR-10 a few minutes per epoch
on 2 CPU cores, not yet run to completion by us.
"""

import ml_collections

from configs import ilsvrc


def get_config(arg=None):
  tokens = set((arg or '').split(',')) - {''}
  unknown = tokens - {'relu', 'tanh', 'digits'}
  if unknown:
    raise ValueError(f'configs/cifar10.py takes relu, tanh and digits, not {sorted(unknown)}.')
  config = ilsvrc.get_config()
  config.dataset.name = 'cifar10'
  config.dataset.eval_split = 'test'
  config.dataset.download = True
  if 'digits' in tokens:
    config.dataset.source = 'digits'
    config.dataset.name = 'digits'

  config.input.resize_size = 32
  config.input.random_crop = False
  config.input.flip = False
  config.input.pca_lighting = 0.0
  config.input.mean = 'image'            # cuda-convnet subtracts the training mean image
  config.input.pixel_scale = 1.0         # of 0-255 pixels

  # models.Figure1Net's keys; None = the model's own default.
  config.model = config.model.__class__()
  config.model.name = 'figure1'
  config.model.num_classes = 10
  config.model.input_size = 32
  config.model.activation = 'tanh' if 'tanh' in tokens else 'relu'   # section 3.1, figure 1
  config.model.dtype = ml_collections.config_dict.placeholder(str)

  config.batch_size = 128
  config.num_epochs = 35.0
  config.optimizer.learning_rate = 0.001   # layer-params-80sec.cfg: epsW
  config.optimizer.weight_decay = 0.0      # "No regularization of any kind"
  config.schedule.name = 'constant'
  config.eval.ten_crop = False
  config.eval.every_epochs = 5.0
  return config
