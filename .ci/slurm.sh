#!/usr/bin/env bash
# A one-node Slurm cluster on loopback for the Slurm executor's tests
# (tests/it/slurm.rs): Debian 12's Slurm 22.05 packages, run as root, no
# systemd, no accounting database (`sacct -c` reads the completion log).
# Adapted from the team's shared setup script; what each setting fixed is in
# docs/cluster.md ("Testing on a loopback cluster").
#
#   bash .ci/slurm.sh start    install if missing, write /etc/slurm/slurm.conf, start daemons
#   bash .ci/slurm.sh status   daemons, sinfo, squeue
#   bash .ci/slurm.sh stop     stop the daemons it started (by PID file)
set -euo pipefail

CPUS="${SLURM_CPUS:-$(nproc)}"
# Leave ~10 % of RAM out of RealMemory; slurmd drains the node if it reports less.
MEM_MB=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
CONF=/etc/slurm/slurm.conf

log() { printf '[setup_slurm] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root"

pid_alive() { # pidfile
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

try_wait() { # seconds command... -> 0 as soon as the command succeeds, 1 on timeout
  local t=$1; shift
  for _ in $(seq 1 $((t * 2))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  return 1
}

wait_for() { # seconds description command...
  local t=$1 what=$2; shift 2
  try_wait "$t" "$@" || die "timed out after ${t}s waiting for: $what"
}

stop_pidfile() { # name pidfile
  local name=$1 pf=$2 pid
  if pid_alive "$pf"; then
    pid=$(cat "$pf")
    log "stopping $name (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then log "$name did not stop, sending KILL"; kill -9 "$pid"; fi
  fi
  rm -f "$pf"
}

install_packages() {
  local pkgs=(munge slurmctld slurmd slurm-client)
  local missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && { log "packages present"; return; }
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # An image may come with empty or stale package lists.
  if ! apt-cache policy slurmctld 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    apt-get update -q
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}" || {
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  }
}

write_if_changed() { # path mode content -> returns 0 when the file changed
  local path=$1 mode=$2 content=$3
  if [ -f "$path" ] && [ "$(cat "$path")" = "$content" ]; then return 1; fi
  printf '%s\n' "$content" > "$path.tmp"
  chmod "$mode" "$path.tmp"
  mv "$path.tmp" "$path"
  log "wrote $path"
  return 0
}

start_munge() {
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    install -d -o munge -g munge -m 0700 /etc/munge
    if command -v mungekey >/dev/null; then
      runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
  fi
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  if ! pid_alive /run/munge/munged.pid; then
    log "starting munged"
    # munged refuses to run as root; run it as its own user.
    runuser -u munge -- /usr/sbin/munged
  fi
  wait_for 10 "munge round trip" sh -c 'munge -n | unmunge'
}

slurm_conf() {
  local acct="AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log"
  cat <<EOF
# Written by setup_slurm.sh: one node, loopback only.
ClusterName=local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# No cgroups: proctrack/linuxproc + task/none work in a container without systemd.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
# Time limits are enforced within seconds, so that the test of a job
# killed at its limit takes about a minute (the shortest --time).
KillWait=2
OverTimeLimit=0
# Cancel a job whose afterok parent failed instead of leaving it
# PENDING (DependencyNeverSatisfied) forever. In 22.05 this key lives in
# DependencyParameters; under SchedulerParameters/SlurmctldParameters it is ignored.
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Reject at submit time a job that can never fit (e.g. -c 3 on a 2-CPU node);
# the default leaves it PENDING (PartitionConfig) forever.
EnforcePartLimits=ALL
$acct
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  install_packages
  install -d -m 0755 /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  start_munge

  local restart_ctld=0
  write_if_changed "$CONF" 0644 "$(slurm_conf)" && restart_ctld=1


  if [ $restart_ctld = 1 ]; then
    stop_pidfile slurmd /run/slurmd.pid
    stop_pidfile slurmctld /run/slurmctld.pid
  fi
  if ! pid_alive /run/slurmctld.pid; then
    log "starting slurmctld"
    /usr/sbin/slurmctld
  fi
  wait_for 30 "slurmctld" scontrol ping
  if ! pid_alive /run/slurmd.pid; then
    log "starting slurmd -N localhost"
    # -N: the node is called localhost whatever the machine's hostname is.
    /usr/sbin/slurmd -N localhost
  fi
  try_wait 30 sh -c 'sinfo -h -n localhost -o %T | grep -Eq "^(idle|mixed|allocated)"' || true
  local st; st=$(sinfo -h -n localhost -o %T)
  case "$st" in
    idle*|mixed*|allocated*) ;;
    *) log "node state '$st', resuming"; scontrol update nodename=localhost state=resume || true
       wait_for 15 "node idle" sh -c 'sinfo -h -n localhost -o %T | grep -q idle' ;;
  esac
  log "ready: $(sinfo -h -o '%P %a %D %T %N')"
}

stop() {
  stop_pidfile slurmd /run/slurmd.pid
  stop_pidfile slurmctld /run/slurmctld.pid
  stop_pidfile munged /run/munge/munged.pid
}

status() {
  for d in munged:/run/munge/munged.pid slurmctld:/run/slurmctld.pid slurmd:/run/slurmd.pid; do
    if pid_alive "${d#*:}"; then echo "${d%%:*}: running pid $(cat "${d#*:}")"; else echo "${d%%:*}: not running"; fi
  done
  sinfo 2>/dev/null || true
  squeue 2>/dev/null || true
}

case "${1:-start}" in
  start) start ;;
  status) status ;;
  stop) stop ;;
  *) die "usage: $0 [start|status|stop]" ;;
esac
