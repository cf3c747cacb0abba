#!/usr/bin/env bash
# Stop the test cluster that tests/cluster/start_slurm.sh started in STATE_DIR.
#
#   tests/cluster/stop_slurm.sh STATE_DIR
#
# Ends only the slurmd, slurmctld and munged whose pid files are in STATE_DIR (each by its
# process id, after checking that the id still belongs to that program), waits for them
# to exit, removes /etc/slurm/slurm.conf when it is the one written for STATE_DIR, and
# leaves STATE_DIR (logs, job completion log) in place.
set -uo pipefail

state=${1:?usage: stop_slurm.sh STATE_DIR}

stop() { # stop NAME PIDFILE
  local name=$1 pidfile=$2 pid
  [ -f "$pidfile" ] || return 0
  pid=$(tr -dc '0-9' <"$pidfile")
  [ -n "$pid" ] || return 0
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
    return 0 # already gone, or the id was reused by another program
  fi
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  echo "stop_slurm: $name ($pid) still running after 10 s, killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

# slurmd first (ends its job steps), then the controller, then munge they both use
stop slurmd "$state/slurmd.pid"
stop slurmctld "$state/slurmctld.pid"
stop munged "$state/munge/munged.pid"

conf=/etc/slurm/slurm.conf
state_abs=$(cd "$state" 2>/dev/null && pwd -P)
if [ -n "$state_abs" ] && [ -f "$conf" ] \
  && grep -qxF "# written by tests/cluster/start_slurm.sh for $state_abs" "$conf"; then
  rm -f "$conf"
fi
exit 0
