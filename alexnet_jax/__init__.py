"""alexnet_jax: Krizhevsky, Sutskever & Hinton (NIPS 2012) in JAX/Flax."""

import sys as _sys

if _sys.argv[:1] == ['-m']:
  # `python -m alexnet_jax.<tool>`: the package is imported while the tool is
  # being located (argv[0] is '-m' then), before the tool's own imports. Import
  # TensorFlow here without its C++ start-up lines (they ignore
  # TF_CPP_MIN_LOG_LEVEL), so every command prints only its own output.
  from alexnet_jax import cli as _cli
  if _sys.orig_argv[_sys.orig_argv.index('-m') + 1:][:1] == ['alexnet_jax.main']:
    # Training: SIGTERM/SIGINT exit with status 75 and one line from here on,
    # the TensorFlow import included (alexnet_jax/preemption.py).
    from alexnet_jax import preemption as _preemption
    _preemption.exit_on_signals()
    _preemption.fault_point('import')
  _cli.import_tensorflow_quietly()
