#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by tests/cluster/slurm-up.sh and remove its job state, so the
# next bring-up starts clean. Processes are stopped by the pid files the daemons wrote (never by name):
# TERM, wait up to 10 s, then KILL. Safe to run when nothing is up (exit 0).
#
#   sudo tests/cluster/slurm-down.sh            # stop daemons, drop job state
#   sudo tests/cluster/slurm-down.sh --purge    # also apt-get purge the packages and remove /etc/slurm
set -uo pipefail
PURGE=0
[ "${1:-}" = "--purge" ] && PURGE=1
[ "$(id -u)" = 0 ] || { echo "slurm-down: must run as root" >&2; exit 1; }

failed=0
stop_pidfile() {   # stop_pidfile FILE: stop the process whose pid FILE holds, then remove FILE
  local pf=$1 pid
  [ -s "$pf" ] || return 0
  pid=$(cat "$pf")
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null
      sleep 0.2
    fi
    if kill -0 "$pid" 2>/dev/null; then
      echo "slurm-down: could not stop pid $pid from $pf" >&2
      failed=1
      return 0
    fi
    echo "slurm-down: stopped $(basename "$pf" .pid) (pid $pid)"
  fi
  rm -f "$pf"
}

# Order: compute daemon, controller, accounting, database, then munge (the others authenticate with it).
for pf in /run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid /run/mysqld/mysqld.pid /run/munge/munged.pid; do
  stop_pidfile "$pf"
done
# Job and node state: a re-bring-up would otherwise resume old job ids.
rm -rf /var/spool/slurmctld /var/spool/slurmd

if [ "$PURGE" = 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get purge -y -qq slurmctld slurmd slurm-client slurmdbd munge mariadb-server >/dev/null 2>&1 || true
  apt-get autoremove -y -qq >/dev/null 2>&1 || true
  rm -rf /etc/slurm /var/log/slurm
  if [ -e /run/gfm-slurm-policy-rc.d ]; then rm -f /usr/sbin/policy-rc.d /run/gfm-slurm-policy-rc.d; fi
fi
exit $failed
