r"""Figure 1: a four-layer CNN on CIFAR-10, ReLU vs tanh (tfds downloads it).

Commands (one per curve of figure 1):

  python -m alexnet_jax.main --config=configs/cifar10.py --workdir=$WORKDIR/relu
  python -m alexnet_jax.main --config=configs/cifar10.py:tanh --workdir=$WORKDIR/tanh

The claim: the ReLU network reaches 25% training error six times faster than
the tanh one. Training error is logged as train_top1_error in TensorBoard.

Data: tfds `cifar10` (50,000 train / 10,000 test, ~160 MB), downloaded on
first use. As in figure 1: no regularization (no weight decay, no dropout, no
augmentation). The paper tuned each net's learning rate separately; set
--config.optimizer.learning_rate per run. The network (models.Figure1Net)
follows cuda-convnet's layers-80sec configuration, since the paper does not
print its layers.

Hardware and result: a few minutes per epoch on 2 CPU cores; not yet run to
completion by us.
"""

from configs import ilsvrc


def get_config(arg=None):
  config = ilsvrc.get_config()
  config.dataset.name = 'cifar10'
  config.dataset.eval_split = 'test'
  config.dataset.download = True

  config.input.resize_size = 32
  config.input.random_crop = False
  config.input.flip = False
  config.input.pca_lighting = 0.0
  config.input.mean = 'channel'

  config.model = config.model.__class__()
  config.model.name = 'figure1'
  config.model.num_classes = 10
  config.model.input_size = 32
  config.model.activation = 'tanh' if arg == 'tanh' else 'relu'
  config.model.dtype = 'float32'

  config.batch_size = 128
  config.num_epochs = 35.0
  config.optimizer.weight_decay = 0.0
  config.schedule.name = 'constant'
  config.eval.ten_crop = False
  return config
