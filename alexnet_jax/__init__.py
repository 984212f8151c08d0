"""alexnet_jax: Krizhevsky, Sutskever & Hinton (NIPS 2012) in JAX/Flax."""

import sys as _sys

if _sys.argv[:1] == ['-m']:
  # `python -m alexnet_jax.<tool>`: the package is imported while the tool is
  # being located (argv[0] is '-m' then), before the tool's own imports. Import
  # TensorFlow here without its C++ start-up lines (they ignore
  # TF_CPP_MIN_LOG_LEVEL), so every command prints only its own output.
  from alexnet_jax import cli as _cli
  _cli.import_tensorflow_quietly()
