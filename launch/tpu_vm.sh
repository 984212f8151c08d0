#!/bin/bash
# AlexNet on every worker of a Cloud TPU VM slice (v4-32, v5e-64, ...).
#
#   launch/tpu_vm.sh NAME ZONE --workdir=gs://BUCKET/DIR [--config=FILE] \
#       [--config.KEY=VALUE ...]
#
# Packs this checkout (tracked and untracked, not ignored, files), copies it
# to every worker, and there runs launch/tpu_vm_worker.sh, which creates the
# Python environment (~/alexnet_venv: requirements.txt + jax[tpu]) when it is
# missing or requirements.txt changed, and starts alexnet_jax.main. Every
# worker runs the same command; jax.distributed.initialize() needs no
# arguments on a TPU VM. The workdir must be on a bucket, which every worker
# can read and write. The config defaults to configs/ilsvrc.py.
#
# Env: PROJECT (gcloud --project), TPU_PYTHON (the workers' Python >= 3.11
# for the environment; default python3), CODE_TGZ (the local archive; default
# /tmp/alexnet_jax_code.tgz), DRY_RUN=1 prints the commands instead.
# The job lives as long as the ssh session: start it inside tmux or screen.

set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=launch/lib.sh disable=SC1091
source launch/lib.sh

if [[ $# -lt 3 ]]; then
  echo "usage: launch/tpu_vm.sh NAME ZONE --workdir=gs://BUCKET/DIR [--config=FILE] [--config.KEY=VALUE ...]" >&2
  exit 2
fi
name="$1"
zone="$2"
shift 2
args=("$@")
if [[ ! " ${args[*]} " =~ \ --workdir=gs:// ]]; then
  echo "tpu_vm.sh: give --workdir=gs://BUCKET/DIR (all workers write there)" >&2
  exit 2
fi
if [[ ! " ${args[*]} " =~ \ --config= ]]; then
  args=(--config=configs/ilsvrc.py "${args[@]}")   # must precede overrides
fi

code="${CODE_TGZ:-/tmp/alexnet_jax_code.tgz}"
gcloud_args=(--zone="${zone}" --worker=all)
if [[ -n "${PROJECT:-}" ]]; then gcloud_args+=(--project="${PROJECT}"); fi

remote="cd && rm -rf alexnet_jax && mkdir alexnet_jax"
remote+=" && tar -xzf alexnet_jax_code.tgz -C alexnet_jax && "
if [[ -n "${TPU_PYTHON:-}" ]]; then remote+="TPU_PYTHON=$(q "${TPU_PYTHON}") "; fi
remote+="bash alexnet_jax/launch/tpu_vm_worker.sh $(join "${args[@]}")"

if [[ -n "${DRY_RUN:-}" ]]; then
  echo "git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -czf $(q "${code}")"
else
  git ls-files -z --cached --others --exclude-standard \
    | tar --null -T - --ignore-failed-read -czf "${code}"
fi
run gcloud compute tpus tpu-vm scp "${code}" "${name}:alexnet_jax_code.tgz" "${gcloud_args[@]}"
run gcloud compute tpus tpu-vm ssh "${name}" "${gcloud_args[@]}" --command="${remote}"
