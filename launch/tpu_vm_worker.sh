#!/bin/bash
# Runs on each worker of a TPU VM slice (launch/tpu_vm.sh starts it there):
# creates the Python environment if it is missing or requirements.txt changed,
# then runs alexnet_jax.main with the given flags.
#
# Env: VENV (default ~/alexnet_venv), TPU_PYTHON (Python >= 3.11 to create it
# with; default python3).

set -euo pipefail
cd "$(dirname "$0")/.."

venv="${VENV:-${HOME}/alexnet_venv}"
if ! cmp -s requirements.txt "${venv}/requirements.txt"; then
  py="${TPU_PYTHON:-python3}"
  if ! "${py}" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "$(hostname): ${py} is older than Python 3.11, which jax needs;" \
      "install one (e.g. apt-get install python3.11-venv) and set TPU_PYTHON" >&2
    exit 1
  fi
  jax_version="$(sed -n 's/^jax==//p' requirements.txt)"
  "${py}" -m venv "${venv}"
  "${venv}/bin/pip" install -q --upgrade pip
  "${venv}/bin/pip" install -q -r requirements.txt "jax[tpu]==${jax_version}"
  cp requirements.txt "${venv}/requirements.txt"
fi

exec "${venv}/bin/python" -u -m alexnet_jax.main "$@"
