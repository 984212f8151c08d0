r"""Entry point: python -m alexnet_jax.main --config=configs/ilsvrc.py --workdir=DIR.

Every config value is overridable as --config.a.b=value. With no --config, the
no-download default (configs/digits.py) runs.

Before anything runs or the workdir is touched, the whole config is checked
(alexnet_jax/config_checks.py): a mistyped key, a bad value, a mesh the
devices cannot form, a class count the dataset does not have or an unusable
--workdir exits with status 2 and one message listing every problem and its
fix. Errors found later (a missing dataset, a checkpoint of another config, a
diverged loss) exit with status 1. Neither prints a traceback.

Exit status: 0 finished; 75 (EX_TEMPFAIL, train.PREEMPTED_EXIT_CODE) stopped by
SIGTERM/SIGINT with a checkpoint saved (rerun the same command to resume);
2 a config, flag or workdir problem; 1 any other error, with its message on stderr.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from alexnet_jax import cli
from alexnet_jax import config_checks

USAGE_ERROR = 2   # exit status: the command line or the config cannot run
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              'configs', 'digits.py')


def _exit_on_bad_config_flags(argv) -> None:
  """One line per mistyped --config.KEY (with the closest keys) or missing
  --config file, and exit. Runs before the config flag is defined, which
  would raise chained tracebacks (`AttributeError: "'lrm'"`, `OSError`)."""
  problems = config_checks.config_flag_problems(argv, DEFAULT_CONFIG)
  if problems:
    print('\n'.join(f'ERROR: {p}' for p in problems), file=sys.stderr)
    sys.exit(USAGE_ERROR)


_exit_on_bad_config_flags(sys.argv)
FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and metrics.')
config_flags.DEFINE_config_file(
    'config', DEFAULT_CONFIG, 'Training configuration file (configs/*.py[:arg]).',
    lock_config=True)
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_library_logs()
  # Keep TensorFlow (the input pipeline) off the accelerators JAX uses.
  tf = cli.import_tensorflow_quietly()
  tf.config.experimental.set_visible_devices([], 'GPU')
  tf.config.experimental.set_visible_devices([], 'TPU')

  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from alexnet_jax import parallel  # pylint: disable=g-import-not-at-top
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  config, workdir = FLAGS.config, FLAGS.workdir
  try:
    problems = config_checks.workdir_problems(workdir)
    parallel.maybe_initialize_distributed()
    problems += config_checks.validate(config, num_devices=jax.device_count())
    if not problems:  # Then the dataset (cheap unless a tfds download is due).
      problems = config_checks.dataset_problems(config, input_pipeline.dataset_info(config))
    config_checks.raise_any(problems)
    train.train_and_evaluate(config, workdir)
  except config_checks.ConfigError as e:
    print(f'ERROR: {e}', file=sys.stderr)
    sys.exit(USAGE_ERROR)
  except train.Preempted:  # Checkpoint saved; a launcher reruns on this status.
    sys.exit(train.PREEMPTED_EXIT_CODE)
  except (input_pipeline.DatasetNotFoundError, train.ckpt_lib.CheckpointMismatchError,
          train.NonFiniteLossError, train.ckpt_lib.CheckpointWriteError,
          train.workdir_lock.WorkdirLockedError, train.EvaluationError) as e:
    print(f'ERROR: {e}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
