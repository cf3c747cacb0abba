#!/usr/bin/env bash
# Start a throw-away single-node SLURM cluster on this machine, for tests.
#
#   tests/cluster/start_slurm.sh STATE_DIR
#
# Installs Debian's slurm-wlm and munge when they are missing (needs root and apt-get),
# then writes STATE_DIR/slurm.conf for one node named `hostname -s` on 127.0.0.1 and
# starts a private munged, slurmctld and slurmd whose keys, sockets, spool, logs and pid
# files all live in STATE_DIR. Nothing under /etc is changed and no system daemon is
# touched, so a cluster already running here keeps running. Free ports are picked, so two
# of these clusters can run side by side.
#
# Clients find the cluster through SLURM_CONF: `. STATE_DIR/env` sets it. The script
# returns once `sinfo` shows the node idle, and exits non-zero (with the daemon logs on
# stderr) when SLURM cannot be installed or does not come up. Stop it with
# tests/cluster/stop_slurm.sh STATE_DIR, which ends exactly the daemons started here.
set -euo pipefail

state=${1:?usage: start_slurm.sh STATE_DIR}
mkdir -p "$state"
state=$(cd "$state" && pwd -P)
chmod 0700 "$state"

say() { echo "start_slurm: $*" >&2; }

# --- 1. packages --------------------------------------------------------------------
need=()
for cmd in munged mungekey slurmctld slurmd sbatch sacct sinfo; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "missing ${need[*]} and cannot install them (needs root and apt-get)"
    exit 1
  fi
  say "installing slurm-wlm and munge (missing: ${need[*]})"
  if ! { apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurm-wlm slurm-client munge; } >"$state/apt.log" 2>&1; then
    tail -n 20 "$state/apt.log" >&2
    say "apt-get could not install slurm-wlm and munge"
    exit 1
  fi
fi

# --- 2. munge: a private key, socket and daemon ---------------------------------------
mkdir -p "$state/munge"
chmod 0700 "$state/munge"
mungekey --create --keyfile="$state/munge/munge.key" --force >/dev/null 2>&1 \
  || dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
chmod 0600 "$state/munge/munge.key"
socket="$state/munge/munge.socket"
munged --force \
  --socket="$socket" \
  --key-file="$state/munge/munge.key" \
  --pid-file="$state/munge/munged.pid" \
  --log-file="$state/munge/munged.log" \
  --seed-file="$state/munge/munged.seed"

# --- 3. slurm.conf ---------------------------------------------------------------------
free_port() {
  python3 - <<'EOF'
import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
EOF
}
ctld_port=${SLURMCTLD_PORT:-$(free_port)}
slurmd_port=${SLURMD_PORT:-$(free_port)}
while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done

node=$(hostname -s)
# CPUs, sockets, cores and memory exactly as slurmd sees them, so the node is not drained
node_hw=$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //')
mkdir -p "$state/ctld" "$state/spool"

cat >"$state/slurm.conf" <<EOF
# Single-node test cluster written by tests/cluster/start_slurm.sh; not for production.
ClusterName=dsp-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
# no cgroups in containers: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# No slurmdbd: sacct then asks slurmctld, which knows the jobs for MinJobAge seconds
# after they end. The job completion log keeps a record of every job for the tests.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/filetxt
JobCompLoc=$state/jobcomp.log
MinJobAge=3600
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName=$node NodeAddr=127.0.0.1 $node_hw State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF

{
  echo "export SLURM_CONF=$state/slurm.conf"
} >"$state/env"
export SLURM_CONF="$state/slurm.conf"

# --- 4. daemons --------------------------------------------------------------------------
fail() {
  say "$*"
  for log in "$state/munge/munged.log" "$state/slurmctld.log" "$state/slurmd.log"; do
    [ -f "$log" ] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }
  done
  exit 1
}

slurmctld -i || fail "slurmctld did not start"
slurmd -N "$node" || fail "slurmd did not start"

# --- 5. wait for the node to be idle -----------------------------------------------------
for _ in $(seq 1 60); do
  state_now=$(sinfo --noheader --nodes="$node" --format=%t 2>/dev/null || true)
  case "$state_now" in
    idle*)
      say "node $node idle (SLURM_CONF=$SLURM_CONF)"
      exit 0
      ;;
  esac
  sleep 1
done
fail "node $node not idle after 60 s (sinfo: ${state_now:-no answer})"
