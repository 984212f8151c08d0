r"""Entry point: python -m alexnet_jax.main --config=configs/ilsvrc.py --workdir=DIR.

Every config value is overridable as --config.a.b=value. With no --config, the
no-download default (configs/digits.py) runs.

Before anything runs or the workdir is touched, the whole config is checked
once (train.check_config -> alexnet_jax/config_checks.py): a mistyped key, a
bad value, a mesh the devices cannot form, a class count the dataset does not
have or an unusable --workdir exits with status 2 and one message listing
every problem and its fix. Errors found later (a missing dataset, a checkpoint
of another config, a diverged loss) exit with status 1. Neither prints a
traceback (alexnet_jax/cli.py).

Exit status: 0 finished; 75 (EX_TEMPFAIL, preemption.PREEMPTED_EXIT_CODE)
stopped with nothing unsaved lost, rerun the same command to resume: by
SIGTERM/SIGINT at any moment (a checkpoint saved if one was due), a lost
process of a multi-process run, or no progress for config.watchdog_minutes
(alexnet_jax/supervisor.py);
2 a config, flag or workdir problem; 1 any other error, with its message on
stderr.
"""

import os

from absl import flags

from alexnet_jax import cli
from alexnet_jax import preemption

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              'configs', 'digits.py')


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, argv=None) -> None:
  """main's flags (sweep parses its runs with these same definitions)."""
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and metrics.',
                      flag_values=flag_values)
  cli.config_flag(DEFAULT_CONFIG, 'Training configuration file (configs/*.py[:arg]).',
                  flag_values=flag_values, sys_argv=argv)
  flags.mark_flags_as_required(['workdir'], flag_values=flag_values)


def main(argv, hooks=()) -> None:
  """`hooks`: extra supervisor hooks (train.train_and_evaluate; the fault tests')."""
  del argv
  # Keep TensorFlow (the input pipeline) off the accelerators JAX uses. (cli.run
  # has imported it, quietly.)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.experimental.set_visible_devices([], 'GPU')
  tf.config.experimental.set_visible_devices([], 'TPU')
  from alexnet_jax import parallel  # pylint: disable=g-import-not-at-top
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  parallel.maybe_initialize_distributed()
  train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir, hooks)


def run() -> None:
  """The command: SIGTERM/SIGINT exit 75 with one line from here on, before
  TensorFlow's import (cli.run) and the rest (preemption.exit_on_signals)."""
  preemption.exit_on_signals()
  cli.run(main, define_flags, config_default=DEFAULT_CONFIG)


if __name__ == '__main__':
  run()
