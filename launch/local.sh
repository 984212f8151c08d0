#!/bin/bash
# AlexNet on one machine with all its GPUs (or TPU chips, or the CPU): a single
# process that sees every local device; the config's (data, model) mesh spans
# them.
#
#   launch/local.sh --workdir=/ckpt/run1 [--config=configs/ilsvrc.py] \
#       [--config.KEY=VALUE ...]
#
# The config defaults to configs/ilsvrc.py. Relative paths are relative to the
# repository root. Env: PYTHON (default: python), DRY_RUN=1 prints the command
# instead of running it, CUDA_VISIBLE_DEVICES picks a subset of the GPUs.

set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=launch/lib.sh disable=SC1091
source launch/lib.sh

PYTHON="${PYTHON:-python}"
args=("$@")
if [[ ! " ${args[*]} " =~ \ --workdir= ]]; then
  echo "usage: launch/local.sh --workdir=DIR [--config=FILE] [--config.KEY=VALUE ...]" >&2
  exit 2
fi
if [[ ! " ${args[*]} " =~ \ --config= ]]; then
  args=(--config=configs/ilsvrc.py "${args[@]}")   # must precede overrides
fi
cmd=("${PYTHON}" -u -m alexnet_jax.main "${args[@]}")

if [[ -n "${DRY_RUN:-}" ]]; then
  join "${cmd[@]}"
  echo
  exit 0
fi
# One process: keep an enclosing Slurm allocation (salloc -n 8) from making
# main start a multi-process job.
unset SLURM_NTASKS SLURM_NPROCS
if command -v nvidia-smi > /dev/null; then nvidia-smi -L || true; fi
exec "${cmd[@]}"
