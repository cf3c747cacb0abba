#!/usr/bin/env bash
# Start a throw-away single-node SLURM cluster on this machine, for tests.
#
#   tests/cluster/start_slurm.sh STATE_DIR
#
# Installs Debian's slurm-wlm and munge when they are missing (needs root and apt-get),
# writes a slurm.conf for one node named `hostname -s` on 127.0.0.1 and starts a private
# munged, slurmctld and slurmd whose munge key and socket, state, spool, logs and pid files
# all live in STATE_DIR, on free ports. No system daemon is touched.
#
# The config goes to /etc/slurm/slurm.conf, where every SLURM command finds it as on a
# real cluster (a copy stays in STATE_DIR). It has to: the executor plugin's job step
# drops SLURM_* variables, SLURM_CONF included, before its `srun`. So the script refuses
# when /etc/slurm/slurm.conf is not one of its own, or belongs to another test
# cluster that is still running.
#
# Returns 0 once `sinfo` shows the node idle. Exit status otherwise: 3 when SLURM is
# missing and cannot be installed, 4 when /etc/slurm/slurm.conf is taken (see above),
# 1 when the daemons do not come up (their logs are printed on stderr). Stop it with
# tests/cluster/stop_slurm.sh STATE_DIR, which ends exactly the daemons started here and
# removes the config it wrote.
set -euo pipefail

state=${1:?usage: start_slurm.sh STATE_DIR}
mkdir -p "$state"
state=$(cd "$state" && pwd -P)
chmod 0700 "$state"

say() { echo "start_slurm: $*" >&2; }
fail() { # print the daemons' logs, exit 1
  say "$*"
  for log in "$state/munge/munged.log" "$state/slurmctld.log" "$state/slurmd.log"; do
    if [ -f "$log" ]; then
      echo "--- $log" >&2
      tail -n 20 "$log" >&2
    fi
  done
  exit 1
}

# --- 1. packages --------------------------------------------------------------------
need=()
for cmd in munged mungekey slurmctld slurmd sbatch sacct sinfo; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "missing ${need[*]} and cannot install them (needs root and apt-get)"
    exit 3
  fi
  say "installing slurm-wlm and munge (missing: ${need[*]})"
  if ! { apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurm-wlm slurm-client munge; } >"$state/apt.log" 2>&1; then
    tail -n 20 "$state/apt.log" >&2
    say "apt-get could not install slurm-wlm and munge"
    exit 3
  fi
fi

# --- 2. the system config slot -------------------------------------------------------
conf=/etc/slurm/slurm.conf
marker="# written by tests/cluster/start_slurm.sh for"
mkdir -p "$(dirname "$conf")"
# one start at a time: checking the slot and claiming it must not interleave
lock=/tmp/.dicom-study-pipeline-start_slurm.lock
exec 9>"$lock"
if ! flock -w 120 9; then
  say "another start_slurm.sh holds $lock"
  exit 4
fi
if [ -e "$conf" ]; then
  if ! grep -q "^$marker " "$conf"; then
    say "$conf exists and was not written by this script; not touching it"
    exit 4
  fi
  other=$(sed -n "s|^$marker ||p" "$conf" | head -n 1)
  pid=$(tr -dc '0-9' <"$other/slurmctld.pid" 2>/dev/null || true)
  if [ "$other" != "$state" ] && [ -n "$pid" ] \
    && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = slurmctld ]; then
    say "another test cluster ($other) is running; stop it first"
    exit 4
  fi
fi

# --- 3. munge: a private key, socket and daemon ---------------------------------------
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
  --seed-file="$state/munge/munged.seed" 9>&- \
  || fail "munged did not start"

# --- 4. slurm.conf ---------------------------------------------------------------------
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
$marker $state
# Single-node test cluster; not for production.
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
# No slurmdbd, so plain sacct answers "accounting storage is disabled". Instead every
# finished job is written to the job completion log, which sacct --completion reads,
# and squeue keeps showing finished jobs for MinJobAge seconds (the executor plugin's
# status command squeue relies on that).
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

cp "$state/slurm.conf" "$conf"
unset SLURM_CONF

# --- 5. daemons --------------------------------------------------------------------------
# (the daemons must not inherit the lock's descriptor, or they would hold it for good)
slurmctld -i 9>&- || fail "slurmctld did not start"
slurmd -N "$node" 9>&- || fail "slurmd did not start"

# --- 6. wait for the node to be idle -----------------------------------------------------
for _ in $(seq 1 60); do
  state_now=$(sinfo --noheader --nodes="$node" --format=%t 2>/dev/null || true)
  case "$state_now" in
    idle*)
      say "node $node idle ($conf, state in $state)"
      exit 0
      ;;
  esac
  sleep 1
done
fail "node $node not idle after 60 s (sinfo: ${state_now:-no answer})"
