#!/usr/bin/env bash
# Bring up a real one-node SLURM cluster on this machine (Debian 12, as root, no systemd), for the cluster
# tests (pytest -m cluster) and for trying profiles/slurm by hand. Undo with tests/cluster/slurm-down.sh.
#
#   sudo tests/cluster/slurm-up.sh              # slurmctld + slurmd + munge, no accounting
#   sudo WITH_DBD=1 tests/cluster/slurm-up.sh   # also MariaDB + slurmdbd, so sacct works
#   (how long each takes: BENCHMARKS.md, "Test suite")
#
# What it does: apt-get installs Debian's slurm-wlm daemons and munge; writes /etc/slurm/slurm.conf for one
# node from `slurmd -C` (real CPUs and RealMemory, partition `debug`) plus one fake GPU (gres.conf with
# File=/dev/null) so `resources: gpu=1` jobs can be scheduled on a CPU machine; starts the daemons directly
# (they write pid files in /run, which slurm-down.sh uses); waits until `sinfo` shows the node idle and one
# `srun` job has completed. Exit 0 when the cluster is usable; exit 1 with the reason otherwise.
# Facts behind the choices: docs/cluster.md (proctrack/linuxproc and task/none because there are no
# cgroups here; MinJobAge=600 so `squeue` still sees finished jobs when the executor polls without sacct).
set -euo pipefail
WITH_DBD=${WITH_DBD:-0}
HERE=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive
die() { echo "slurm-up: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (installs packages and starts daemons)"
command -v apt-get >/dev/null || die "needs apt-get (Debian/Ubuntu); no apt here"
t0=$(date +%s)

# A previous bring-up that was not torn down would leave daemons holding the ports and munge's socket: stop
# it first. Any one pid file is enough (a bring-up without slurmdbd leaves no slurmdbd or mysqld pid).
for pf in /run/slurmctld.pid /run/slurmd.pid /run/slurmdbd.pid /run/munge/munged.pid /run/mysqld/mysqld.pid; do
  if [ -e "$pf" ]; then "$HERE/slurm-down.sh"; break; fi
done

# Never let package scripts start services (there is no systemd; the daemons are started below).
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
  touch /run/gfm-slurm-policy-rc.d   # slurm-down.sh removes the policy file only if we created it
fi
PKGS="slurmctld slurmd slurm-client munge"
[ "$WITH_DBD" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
# shellcheck disable=SC2086
if ! dpkg -s $PKGS >/dev/null 2>&1; then
  apt-get update -qq || die "apt-get update failed (no network to the Debian mirror?)"
  apt-get install -y -qq --no-install-recommends $PKGS >/dev/null || die "apt-get install $PKGS failed"
fi
t_apt=$(date +%s)

HOST=$(hostname -s)
getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >> /etc/hosts

# --- munge (Debian's postinst normally creates the key) ---
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
runuser -u munge -- /usr/sbin/munged          # daemonizes; pid in /run/munge/munged.pid
munge -n | unmunge >/dev/null || die "munge does not work"

# --- slurm.conf ---
if [ "$WITH_DBD" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
NODELINE=$(slurmd -C | head -1)   # NodeName=<host> CPUs=.. Boards=.. ... RealMemory=..
case "$NODELINE" in NodeName=*RealMemory=*) ;; *) die "unexpected 'slurmd -C' output: $NODELINE" ;; esac
mkdir -p /etc/slurm
cat > /etc/slurm/slurm.conf <<CONF
# Written by gfm-pipeline tests/cluster/slurm-up.sh: one node, one partition, one fake GPU.
ClusterName=ci
SlurmctldHost=${HOST}
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MinJobAge=600
${ACCT}
JobCompType=jobcomp/none
GresTypes=gpu
${NODELINE} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
echo "NodeName=${HOST} Name=gpu File=/dev/null" > /etc/slurm/gres.conf
install -d -o slurm -g slurm /var/spool/slurmctld /var/log/slurm
install -d /var/spool/slurmd

# --- optional accounting: MariaDB + slurmdbd ---
if [ "$WITH_DBD" = 1 ]; then
  install -d -o mysql -g root /run/mysqld
  # mariadbd does not daemonize: detach it; its pid file is what slurm-down.sh stops.
  setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
    >/var/log/slurm/mariadb.log 2>&1 < /dev/null &
  for _ in $(seq 1 120); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.5; done
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmdbpass';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" || die "MariaDB did not start"
  cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmdbpass
StorageLoc=slurm_acct_db
CONF
  chown slurm:slurm /etc/slurm/slurmdbd.conf
  chmod 600 /etc/slurm/slurmdbd.conf   # slurmdbd refuses a config others can read
  /usr/sbin/slurmdbd
  for _ in $(seq 1 120); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
fi

# --- slurmctld + slurmd (both daemonize; pid files in /run) ---
/usr/sbin/slurmctld
/usr/sbin/slurmd
for _ in $(seq 1 120); do sinfo -h -o %t 2>/dev/null | grep -qx idle && break; sleep 0.5; done
sinfo -h -o %t | grep -qx idle || { sinfo >&2 || true; die "node did not become idle (see /var/log/slurm/)"; }
srun -t 1 true || die "a one-second srun job failed (see /var/log/slurm/)"
if [ "$WITH_DBD" = 1 ]; then   # slurmctld registers the cluster with slurmdbd on its own; wait for it
  ok=0
  for _ in $(seq 1 60); do
    sacct -n -X -o state 2>/dev/null | grep -q COMPLETED && { ok=1; break; }
    sleep 0.5
  done
  [ "$ok" = 1 ] || die "sacct does not see the test job (slurmdbd registration failed?)"
fi
t_end=$(date +%s)
echo "slurm-up: node $(sinfo -h -o '%n %c CPUs %m MB %G' | head -1) idle; accounting=$([ "$WITH_DBD" = 1 ] && echo slurmdbd || echo none); apt $((t_apt - t0)) s, daemons $((t_end - t_apt)) s"
