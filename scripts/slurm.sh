#!/usr/bin/env bash
# A real single-node Slurm on this machine, for DAISY's tests, CI and users trying the Slurm
# profile: Debian's slurmctld + slurmd + munge, no systemd, no accounting database.
#
#   bash scripts/slurm.sh start     # install what is missing, configure, start; wait for the node
#   bash scripts/slurm.sh status    # exit 0 when the node answers (idle, mixed or allocated)
#   bash scripts/slurm.sh stop      # stop the daemons this script started (by their PIDs)
#   bash scripts/slurm.sh conf      # print the slurm.conf it writes (nothing started)
#
# Environment:
#   DAISY_SLURM_DIR        state folder (config, spool, logs, PID files)  [/var/lib/daisy-slurm]
#   DAISY_SLURM_PARTITION  name of the one (default) partition            [daisy]
#   DAISY_SLURM_CGROUP     auto | yes | no: track and confine jobs with cgroups (memory enforced
#                          by the kernel) or with proctrack/linuxproc (memory enforced by
#                          slurmd's sampling, OverMemoryKill); auto tries cgroups first  [auto]
#   DAISY_SLURM_MIN_JOB_AGE seconds a finished job stays known to squeue/scontrol     [300]
#
# Idempotent: `start` when the node already answers does nothing. Root only (the daemons run
# as root: SlurmUser=root). /etc/slurm/slurm.conf becomes a link to the state folder's copy
# (clients read it there); a slurm.conf this script did not write is never replaced.
# Works with Debian 12 (Slurm 22.05) and Debian 13 (Slurm 24.11). See docs/slurm.md.
set -euo pipefail

STATE=${DAISY_SLURM_DIR:-/var/lib/daisy-slurm}
PARTITION=${DAISY_SLURM_PARTITION:-daisy}
CGROUP=${DAISY_SLURM_CGROUP:-auto}
MIN_JOB_AGE=${DAISY_SLURM_MIN_JOB_AGE:-300}
CONF=$STATE/etc/slurm.conf
ETC_CONF=/etc/slurm/slurm.conf
MARK="# written by DAISY scripts/slurm.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)

say() { echo "slurm.sh: $*"; }
die() { echo "slurm.sh: error: $*" >&2; exit 1; }

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() {  # the node's state as sinfo says it, or nothing
  timeout 5 sinfo -h -N -o %T 2>/dev/null | head -n1 | tr -d '*~#!%$@^-' || true
}

is_up() {
  case "$(node_state)" in idle|mixed|allocated|completing) return 0 ;; esac
  return 1
}

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d keeps the packages' init scripts from starting daemons we start ourselves
  local policy=/usr/sbin/policy-rc.d created=
  if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy; chmod 755 $policy; created=1; fi
  apt-get install -y --no-install-recommends "${PACKAGES[@]}" >/dev/null || {
    apt-get update >/dev/null && apt-get install -y --no-install-recommends "${PACKAGES[@]}" >/dev/null; }
  [ -n "$created" ] && rm -f $policy
  return 0
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating the munge key /etc/munge/munge.key"
    install -d -o munge -g munge -m 0700 /etc/munge
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile=/etc/munge/munge.key --force
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged --force
  touch "$STATE/run/munged.ours"
  for _ in $(seq 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "munged does not answer (see /var/log/munge/munged.log)"
}

cgroup_version() {  # which cgroup hierarchy Slurm could use here: v1, v2 or nothing
  if [ -d /sys/fs/cgroup/cpuset ] && [ -d /sys/fs/cgroup/memory ] && [ -d /sys/fs/cgroup/freezer ]; then
    echo v1
  elif [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
    echo v2
  fi
}

write_conf() {  # $1: cgroup | linuxproc
  local mode=$1 host node
  host=$(hostname -s)
  node=$(slurmd -C | head -n1 | sed 's/ *UpTime=.*//')
  [ -n "$node" ] || die "slurmd -C printed no node line"
  getent hosts "$host" >/dev/null || node="$node NodeAddr=127.0.0.1"
  mkdir -p "$STATE"/{etc,state,spool,log,run}
  {
    echo "$MARK (the state folder $STATE; do not edit, rerun the script)"
    echo "ClusterName=daisy"
    if getent hosts "$host" >/dev/null; then echo "SlurmctldHost=$host"; else echo "SlurmctldHost=$host(127.0.0.1)"; fi
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "AuthType=auth/munge"
    echo "StateSaveLocation=$STATE/state"
    echo "SlurmdSpoolDir=$STATE/spool"
    echo "SlurmctldPidFile=$STATE/run/slurmctld.pid"
    echo "SlurmdPidFile=$STATE/run/slurmd.pid"
    echo "SlurmctldLogFile=$STATE/log/slurmctld.log"
    echo "SlurmdLogFile=$STATE/log/slurmd.log"
    echo "SlurmctldDebug=info"
    echo "SlurmdDebug=info"
    echo "MpiDefault=none"
    echo "ReturnToService=2"
    echo "SchedulerType=sched/backfill"
    # memory is a consumable: a job gets the memory it asks for, and no more
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core_Memory"
    # squeue sees a finished job this long (the plugin's squeue status query needs >= 120 s)
    echo "MinJobAge=$MIN_JOB_AGE"
    echo "KillWait=5"
    echo "InactiveLimit=0"
    # no accounting database: sacct answers "accounting storage is disabled" (docs/slurm.md)
    echo "AccountingStorageType=accounting_storage/none"
    echo "JobCompType=jobcomp/none"
    if [ "$mode" = cgroup ]; then
      echo "ProctrackType=proctrack/cgroup"
      echo "TaskPlugin=task/cgroup,task/affinity"
      echo "JobAcctGatherType=jobacct_gather/cgroup"
    else
      echo "ProctrackType=proctrack/linuxproc"
      echo "TaskPlugin=task/affinity"
      echo "JobAcctGatherType=jobacct_gather/linux"
      # no cgroup: slurmd samples each job's memory and kills one over its request
      echo "JobAcctGatherParams=OverMemoryKill"
    fi
    echo "JobAcctGatherFrequency=task=5"
    echo "$node State=UNKNOWN"
    echo "PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } >"$CONF.new"
  mv "$CONF.new" "$CONF"
  if [ "$mode" = cgroup ]; then
    {
      echo "$MARK"
      [ "$(cgroup_version)" = v1 ] && echo "CgroupPlugin=cgroup/v1" || { echo "CgroupPlugin=cgroup/v2"; echo "IgnoreSystemd=yes"; }
      echo "CgroupAutomount=yes"
      echo "ConstrainCores=yes"
      echo "ConstrainRAMSpace=yes"
      echo "ConstrainSwapSpace=yes"
      echo "AllowedSwapSpace=0"
    } >"$STATE/etc/cgroup.conf"
  else
    rm -f "$STATE/etc/cgroup.conf"
  fi
}

link_conf() {  # clients (sinfo, sbatch, squeue) read /etc/slurm/slurm.conf
  mkdir -p /etc/slurm
  for name in slurm.conf cgroup.conf; do
    local target=/etc/slurm/$name src=$STATE/etc/$name
    if [ -e "$target" ] && [ ! -L "$target" ] && ! head -n1 "$target" | grep -q "^$MARK"; then
      die "$target exists and was not written by this script: not replacing a real cluster's config"
    fi
    if [ -e "$src" ]; then ln -sfn "$src" "$target"; else [ -L "$target" ] && rm -f "$target"; fi
  done
  return 0
}

stop_daemon() {  # $1: name; stops it by the PID in its PID file
  local pidfile=$STATE/run/$1.pid pid
  if alive "$pidfile"; then
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    say "stopped $1 (pid $pid)"
  fi
  rm -f "$pidfile"
}

start_daemons() {
  alive "$STATE/run/slurmctld.pid" || slurmctld -f "$CONF"
  alive "$STATE/run/slurmd.pid" || slurmd -f "$CONF"
  for _ in $(seq 150); do
    is_up && return 0
    case "$(node_state)" in
      down|drained|draining|fail)   # e.g. "Node unexpectedly rebooted" after a restart
        scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
  done
  return 1
}

cmd_start() {
  [ "$(id -u)" -eq 0 ] || die "run as root (the daemons run as root)"
  if is_up && [ -f "$CONF" ]; then
    say "running: node $(hostname -s) is $(node_state) (config $CONF)"
    return 0
  fi
  install_packages
  mkdir -p "$STATE"/{etc,state,spool,log,run}
  start_munge
  local modes
  case "$CGROUP" in
    yes) modes="cgroup" ;;
    no) modes="linuxproc" ;;
    auto) if [ -n "$(cgroup_version)" ]; then modes="cgroup linuxproc"; else modes="linuxproc"; fi ;;
    *) die "DAISY_SLURM_CGROUP must be auto, yes or no (not $CGROUP)" ;;
  esac
  for mode in $modes; do
    write_conf "$mode"
    link_conf
    if start_daemons && probe "$mode"; then
      echo "$mode" >"$STATE/run/mode"
      say "started: node $(hostname -s) is $(node_state); partition $PARTITION; $mode; $(sinfo -V)"
      say "config $CONF (linked from $ETC_CONF); logs $STATE/log"
      return 0
    fi
    say "Slurm with $mode did not come up (see $STATE/log); stopping it"
    stop_daemon slurmd
    stop_daemon slurmctld
  done
  die "Slurm did not start; logs in $STATE/log"
}

probe() {  # a one-second job must run and complete (cgroup set-ups can fail only at job launch)
  local out
  out=$(timeout 60 srun -N1 -n1 -c1 --mem=64 -t 1 -J daisy-slurm-probe true 2>&1) && return 0
  say "probe job with $1 failed: $out"
  return 1
}

cmd_stop() {
  stop_daemon slurmd
  stop_daemon slurmctld
  # the client links go too: with a config naming a stopped controller every `scontrol` waits ~9 s,
  # and Snakemake's Slurm plugin runs one when it is imported, i.e. by every snakemake or daisy run
  for name in slurm.conf cgroup.conf; do
    if [ -L "/etc/slurm/$name" ] && [ "$(readlink "/etc/slurm/$name")" = "$STATE/etc/$name" ]; then
      rm -f "/etc/slurm/$name"
    fi
  done
  if [ -f "$STATE/run/munged.ours" ]; then
    /usr/sbin/munged --stop >/dev/null 2>&1 || runuser -u munge -- /usr/sbin/munged --stop >/dev/null 2>&1 || true
    rm -f "$STATE/run/munged.ours"
    say "stopped munged"
  fi
  return 0
}

cmd_status() {
  if is_up; then
    say "running: node $(hostname -s) is $(node_state) ($(cat "$STATE/run/mode" 2>/dev/null || echo '?')); $(sinfo -V 2>/dev/null)"
    return 0
  fi
  say "not running"
  return 1
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  restart) cmd_stop; cmd_start ;;
  conf) mode=linuxproc; [ "$CGROUP" != no ] && [ -n "$(cgroup_version)" ] && mode=cgroup
        real=$STATE; STATE=$(mktemp -d); CONF=$STATE/etc/slurm.conf; write_conf "$mode"
        sed "s#$STATE#$real#g" "$CONF"; rm -rf "$STATE" ;;
  *) echo "usage: $0 start|stop|status|restart|conf" >&2; exit 2 ;;
esac
