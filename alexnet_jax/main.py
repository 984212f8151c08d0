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
import re
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

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


class _QuietLibraries(logging.logging.Filter):
  """Drops libraries' INFO chatter (orbax saves, JAX backends) from the console;
  their warnings and all of alexnet_jax's own lines still show."""

  # Warnings that only restate what our own error says next (tfds probing an
  # unprepared data_dir before DatasetNotFoundError names the preparation).
  _RESTATED = ('has no dataset_info.json',)

  def filter(self, record):
    if f'{os.sep}alexnet_jax{os.sep}' in record.pathname:
      return True
    return (record.levelno >= logging.logging.WARNING
            and not any(r in record.getMessage() for r in self._RESTATED))


# TensorFlow's C++ start-up lines, written at import whatever TF_CPP_MIN_LOG_LEVEL says.
_TF_IMPORT_NOISE = re.compile(
    r'^(I\d{4} |WARNING: All log messages before absl::InitializeLog|'
    r'To enable the following instructions)')


def _import_tensorflow():
  """Imports TensorFlow with its C++ INFO lines (oneDNN, CPU features) dropped;
  anything else it writes to stderr is passed on."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode='w+b') as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [line for line in captured.read().decode(errors='replace').splitlines(True)
              if not _TF_IMPORT_NOISE.match(line)]
      sys.stderr.write(''.join(kept))
  return tf


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  # Keep TensorFlow (the input pipeline) off the accelerators JAX uses.
  tf = _import_tensorflow()
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
      problems = config_checks.validate(config, num_devices=jax.device_count(),
                                        dataset_info=input_pipeline.dataset_info(config))
    if problems:
      raise config_checks.ConfigError(config_checks.format_problems(problems))
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
