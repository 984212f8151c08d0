r"""The paper's recipe on Imagenette (10 easy ImageNet classes; tfds downloads it).

Command:

  python -m alexnet_jax.main --config=configs/imagenette.py --workdir=$WORKDIR

Data: tfds `imagenette/full-size-v2` (9,469 train / 3,925 validation images,
~1.5 GB), downloaded and prepared by tfds on first use
(config.dataset.download=True).

Hardware and result: not yet run to completion by us; one GPU should finish
90 epochs in well under an hour. Expect far lower error than ImageNet's
(10 classes); there is no paper number to compare against.

Deviations from configs/ilsvrc.py: dataset and number of classes only.
"""

from configs import ilsvrc


def get_config(arg=None):
  config = ilsvrc.get_config(arg)
  config.dataset.name = 'imagenette/full-size-v2'
  config.dataset.download = True
  config.model.num_classes = 10
  return config
