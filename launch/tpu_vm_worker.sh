#!/bin/bash
# Runs on each worker of a TPU VM slice (launch/tpu_vm.sh starts it there):
# creates the Python environment if it is missing or requirements.txt changed,
# then runs alexnet_jax.main with the given flags, restarting it (bounded)
# when it stops in a way the same command resumes from.
#
# Env: VENV (default ~/alexnet_venv), TPU_PYTHON (Python >= 3.11 to create it
# with; default python3), MAX_RESTARTS (default 10) and RESTART_DELAY_S
# (default 10): restarts after exit status 75 or 137 (see the end).

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

# 75: main stopped with nothing unsaved lost (a signal, a lost or stuck
# worker); 137: a process was killed (kill -9, the OOM killer). Every worker
# sees one of them when any worker fails, so all restart together and
# jax.distributed.initialize() meets again; the run resumes from its last
# checkpoint. At most MAX_RESTARTS times, so that a run failing the same way
# every time does not loop for ever. A signal to this script goes to main and
# ends the loop.
max_restarts="${MAX_RESTARTS:-10}"
child=""
signals=0
forward() {  # Passes a signal on to main; no restart after it.
  signals=$((signals + 1))
  if [[ -n "${child}" ]]; then kill -s "$1" "${child}" 2> /dev/null || true; fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT
restarts=0
while true; do
  # In the background, so that the trap runs (and forwards) while main runs.
  "${venv}/bin/python" -u -m alexnet_jax.main "$@" &
  child=$!
  while true; do
    seen="${signals}"
    status=0
    wait "${child}" || status=$?
    # A trapped signal makes wait return at once (status > 128) while main may
    # still run, or has just exited: wait again for main's own status (bash
    # keeps it for this pid until a wait returns it).
    [[ "${signals}" != "${seen}" && "${status}" -gt 128 ]] || break
  done
  child=""
  if [[ "${signals}" != 0 || ("${status}" != 75 && "${status}" != 137) ]]; then
    exit "${status}"
  fi
  if ((restarts >= max_restarts)); then
    echo "$(hostname): main exited ${status} after ${restarts} restarts" \
      "(MAX_RESTARTS=${max_restarts}); not restarting" >&2
    exit "${status}"
  fi
  restarts=$((restarts + 1))
  echo "$(hostname): main exited ${status}: restart ${restarts} of at most" \
    "${max_restarts} in ${RESTART_DELAY_S:-10} s"
  sleep "${RESTART_DELAY_S:-10}"
done
