#!/usr/bin/env bash
# launch/local_nodes.sh — a stand-in for `srun` on ONE machine: runs a command once per "node".
#
# Usage:  launch/local_nodes.sh [srun options] COMMAND [ARG ...]
#   Understood: --nodes N / --nodes=N / -N N (default 1), --ntasks-per-node 1, and
#   --kill-on-bad-exit[=1] (always on: one node failing stops the others); --overlap,
#   --job-name NAME and -w/--nodelist HOST are accepted and ignored.
#
# Each copy of COMMAND gets the variables srun would set for node rank k in 0..N-1:
# SLURM_NODEID=k, SLURM_PROCID=k, SLURM_LOCALID=0, SLURM_NTASKS=N, SLURM_JOB_NUM_NODES=N,
# SLURM_NNODES=N, SLURM_JOB_ID (kept if set, else "local-PID"), plus MAIN_PROCESS_IP
# (127.0.0.1 unless set: every node is this machine, and there is no scontrol to ask).
# The exit code is the first nonzero code of a node, else 0.
#
# Its purpose is the two-node rehearsal: put a link named `srun` to this script first on
# PATH, and the "srun" launch template of reclaif/pipeline/launcher.py — the exact text
# slurm/run.sbatch hands the driver — starts launch/train.sh for node ranks 0..N-1 here, each
# rendering $RECLAIF_LAUNCHER (torchrun, say) with its own --node_rank.
#
# Environment (optional): SLURM_JOB_ID, MAIN_PROCESS_IP (see above).
set -euo pipefail

nodes=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --nodes=*) nodes=${1#*=}; shift ;;
    --nodes | -N) nodes=$2; shift 2 ;;
    --ntasks-per-node=*) per=${1#*=}; shift ;;
    --ntasks-per-node) per=$2; shift 2 ;;
    --job-name | -J | -w | --nodelist) shift 2 ;;
    --) shift; break ;;
    -*) shift ;;
    *) break ;;
  esac
done
if [[ ${per:-1} != 1 ]]; then
  echo "local_nodes.sh: only --ntasks-per-node 1 is supported" >&2
  exit 2
fi
if [[ $# -lt 1 || ! $nodes =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [--nodes N] COMMAND [ARG ...]" >&2
  exit 2
fi

export SLURM_JOB_ID=${SLURM_JOB_ID:-local-$$}
export SLURM_JOB_NUM_NODES=$nodes SLURM_NNODES=$nodes SLURM_NTASKS=$nodes
export MAIN_PROCESS_IP=${MAIN_PROCESS_IP:-127.0.0.1}

pids=()
stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; }
trap 'stop; wait; exit 143' TERM INT
for ((k = 0; k < nodes; k++)); do
  SLURM_NODEID=$k SLURM_PROCID=$k SLURM_LOCALID=0 "$@" &
  pids+=($!)
done

rc=0
for _ in "${pids[@]}"; do
  if wait -n; then
    continue
  else
    code=$?
  fi
  if ((rc == 0)); then
    rc=$code
    echo "local_nodes.sh: a node exited with code $code; stopping the others" >&2
    stop
  fi
done
exit "$rc"
