#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the tests and for trying `launcher=slurm` locally.
#   scripts/slurm_local.sh start   installs Debian's slurm-wlm if missing (root), writes a config, starts
#                                  slurmctld and slurmd, waits for the node; prints `export SLURM_CONF=...`
#   scripts/slurm_local.sh stop    stops both daemons
# Authentication is auth/none (one node, loopback only), so munge is not needed.
set -euo pipefail
DIR=${MLSYS_SLURM_DIR:-/tmp/mlsys-slurm}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

node_ready() { timeout 10 sinfo -h -o "%t" 2>/dev/null | grep -qE "^(idle|mix|alloc)"; }

case "${1:-start}" in
start)
  if ! command -v slurmctld >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then echo "slurm-wlm is not installed and this is not root" >&2; exit 3; fi
    echo "installing slurm-wlm..." >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm >&2
  fi
  if [ -f "$CONF" ] && node_ready; then echo "export SLURM_CONF=$CONF"; exit 0; fi
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  cat > "$CONF" <<CONF
ClusterName=mlsyslocal
SlurmctldHost=$host
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
  pkill -x slurmctld 2>/dev/null || true
  pkill -x slurmd 2>/dev/null || true
  sleep 1
  slurmctld -f "$CONF" -c
  slurmd -f "$CONF"
  for _ in $(seq 60); do
    if node_ready; then echo "export SLURM_CONF=$CONF"; exit 0; fi
    scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "SLURM did not become ready; see $DIR/log" >&2
  exit 4
  ;;
stop)  # the daemons this script started (their pid files), nothing else
  for pid in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  ;;
*)
  echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
