r"""Entry point: python -m alexnet_jax.main --config=configs/ilsvrc.py --workdir=DIR.

Every config value is overridable as --config.a.b=value; a mistyped key fails
before anything runs (lock_config=True). With no --config, the no-download
default (configs/digits.py) runs.

Exit status: 0 finished; 75 (EX_TEMPFAIL, train.PREEMPTED_EXIT_CODE) stopped by
SIGTERM/SIGINT with a checkpoint saved (rerun the same command to resume);
1 an error, with its message on stderr.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and metrics.')
config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'configs', 'digits.py'),
    'Training configuration file (configs/*.py[:arg]).', lock_config=True)
flags.mark_flags_as_required(['workdir'])


class _QuietLibraries(logging.logging.Filter):
  """Drops orbax's per-save INFO chatter from the console; warnings still show."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or 'orbax' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # Keep TensorFlow (the input pipeline) off the accelerators JAX uses.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.experimental.set_visible_devices([], 'GPU')
  tf.config.experimental.set_visible_devices([], 'TPU')

  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from alexnet_jax import parallel  # pylint: disable=g-import-not-at-top
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  parallel.maybe_initialize_distributed()
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except train.Preempted:  # Checkpoint saved; a launcher reruns on this status.
    sys.exit(train.PREEMPTED_EXIT_CODE)
  except (input_pipeline.DatasetNotFoundError, train.ckpt_lib.CheckpointMismatchError,
          train.NonFiniteLossError, train.ckpt_lib.CheckpointWriteError,
          train.workdir_lock.WorkdirLockedError, train.EvaluationError) as e:
    logging.error('%s', e)
    print(f'ERROR: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
