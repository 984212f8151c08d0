#!/bin/bash
# A single-node Slurm cluster on this Debian or Ubuntu machine, to try
# launch/slurm.sbatch and `sweep --engine=slurm` without a cluster (and for
# tests/test_slurm.py):
#
#   sudo launch/local_slurm.sh        # then: sinfo; sbatch ...; squeue
#
# Installs Debian's slurmctld, slurmd, slurm-client and munge (apt-get), writes
# /etc/slurm/slurm.conf for this host (its CPUs and memory as `slurmd -C`
# reports them, one default partition `local`, no GPUs) and a munge key,
# starts munged, slurmctld and slurmd as plain daemons (no systemd needed),
# and waits until the node is idle. Each step is skipped when it is already
# done: a second call on a running cluster only checks it. A slurm.conf that
# this script did not write is left alone.
#
# Env: SLURM_WAIT_S (default 120): how long to wait for the node.

set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK='# Written by alexnet_jax launch/local_slurm.sh'
WAIT_S="${SLURM_WAIT_S:-120}"

say() { echo "local_slurm: $*"; }
die() { echo "local_slurm: $*" >&2; exit 1; }

node_state() {  # The node's state (idle, mixed, down*, ...), empty if none answers.
  sinfo --noheader --format=%t 2>/dev/null | head -n 1 || true
}

usable() { [[ "$(node_state)" =~ ^(idle|mix|alloc) ]]; }

if command -v sinfo >/dev/null && usable; then
  say "Slurm is up: $(sinfo --noheader --format='%P %D node(s) %c CPUs %t')"
  exit 0
fi

[[ "$(id -u)" == 0 ]] || die "must run as root (sudo $0): it installs packages" \
  "and starts daemons"

packages=(slurmctld slurmd slurm-client munge)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep -q 'install ok installed' \
    || missing+=("${p}")
done
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || die "no apt-get: install ${missing[*]} with" \
    "this system's package manager, then run this again"
  say "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

if [[ ! -s /etc/munge/munge.key ]]; then
  say "writing a munge key"
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key

if [[ -e "${CONF}" ]] && ! grep -qF "${MARK}" "${CONF}"; then
  say "${CONF} exists and was not written by this script: using it as it is"
else
  # `slurmd -C`: NodeName=HOST CPUs=.. Boards=.. ... RealMemory=MB
  node="$(slurmd -C | head -n 1)"
  host="$(hostname -s)"
  say "writing ${CONF}: ${node}"
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  chown slurm:slurm /var/spool/slurmctld /var/log/slurm
  cat > "${CONF}.new" <<EOF
${MARK}
ClusterName=local
SlurmctldHost=${host}
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups needed (containers often lack them).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
${node}
PartitionName=local Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
  mv "${CONF}.new" "${CONF}"
fi

running() { pgrep -x "$1" >/dev/null; }

if ! running munged; then
  say "starting munged"
  mkdir -p /run/munge
  chown munge:munge /run/munge
  runuser -u munge -- /usr/sbin/munged
fi
if ! running slurmctld; then
  say "starting slurmctld"
  /usr/sbin/slurmctld
fi
if ! running slurmd; then
  say "starting slurmd"
  /usr/sbin/slurmd
fi

for ((i = 0; i < WAIT_S; i++)); do
  if usable; then
    say "Slurm is up: $(sinfo --noheader --format='%P %D node(s) %c CPUs %t')"
    exit 0
  fi
  if ((i == 10)) && [[ "$(node_state)" =~ ^(down|drain) ]]; then
    scontrol update NodeName="$(hostname -s)" State=RESUME 2>/dev/null || true
  fi
  sleep 1
done
die "the node is not idle after ${WAIT_S} s (state: '$(node_state)'); see" \
  "/var/log/slurm/slurmctld.log and /var/log/slurm/slurmd.log"
