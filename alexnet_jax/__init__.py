"""alexnet_jax: Krizhevsky, Sutskever & Hinton (NIPS 2012) in JAX/Flax."""

import sys as _sys

if (_sys.argv[:1] == ['-m'] and
    _sys.orig_argv[_sys.orig_argv.index('-m') + 1:][:1] == ['alexnet_jax.main']):
  # `python -m alexnet_jax.main`: the package is imported while main is being
  # located (argv[0] is '-m' then), before its own imports. Training:
  # SIGTERM/SIGINT exit with status 75 and one line from here on, TensorFlow's
  # import included (alexnet_jax/preemption.py). (Every tool imports
  # TensorFlow, quietly, once its flags are parsed: cli.run.)
  from alexnet_jax import preemption as _preemption
  _preemption.exit_on_signals()
  _preemption.fault_point('import')
