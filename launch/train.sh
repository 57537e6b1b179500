#!/usr/bin/env bash
# launch/train.sh — start one training phase on THIS node with a named launch template.
#
# Usage:  launch/train.sh PHASE RUN_DIR [ITERATION]
#   PHASE      sft or dpo
#   RUN_DIR    an existing run directory (runs/NAME, made by `reclaif run` or `reclaif sft`)
#   ITERATION  DPO iteration, 1-based (default 0, for SFT)
#
# Run it once per node: by hand on one machine, or by `srun --ntasks-per-node 1` on Slurm
# (TEMPLATES["srun"] in reclaif/pipeline/launcher.py does exactly that). The command itself is
# rendered from reclaif/pipeline/launcher.py TEMPLATES, the same text the driver and the
# sbatch scripts use, so a local rehearsal and a cluster job cannot drift apart.
#
# Environment (all optional):
#   RECLAIF_LAUNCHER    template name: accelerate (default), torchrun, deepspeed or python
#   ACCELERATE_CONFIG   accelerate YAML (default configs/accelerate/single_node.yaml on one
#                       node, configs/accelerate/multi_node.yaml on several)
#   NUM_MACHINES        nodes (default: $SLURM_JOB_NUM_NODES under Slurm, else 1)
#   MACHINE_RANK        this node's rank (default: $SLURM_NODEID under Slurm, else 0)
#   GPUS_PER_NODE       processes per node (default: $SLURM_GPUS_ON_NODE, else the type-less
#                       count of $SLURM_GPUS_PER_NODE, else the GPUs nvidia-smi lists, else 1)
#   MAIN_PROCESS_IP     rank 0's address (default: first host of `scontrol show hostnames
#                       $SLURM_JOB_NODELIST` under Slurm, else 127.0.0.1)
#   MAIN_PROCESS_PORT   rendezvous port (default 29500)
#   PYTHON              interpreter that renders the command (default python3)
#   SLURM_JOB_ID, SLURM_JOB_NUM_NODES, SLURM_NODEID, SLURM_GPUS_ON_NODE, SLURM_GPUS_PER_NODE,
#   SLURM_JOB_NODELIST  read when set (Slurm sets them inside `srun`).
#
# Signals: SIGUSR1 is ignored by this script and by the launcher it becomes (exec), and that
# disposition is inherited by the training processes until the trainer installs its own
# handler. A SIGUSR1 sent to the whole step (srun / scancel --signal=USR1 JOB.STEP) thus
# reaches the trainers, not torch's elastic agent (for which SIGUSR1 would be fatal).
# Contract assumed of the trainer: on SIGUSR1 it saves a resumable checkpoint, does not mark
# the phase done, and exits with code 0.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
  echo "usage: $0 PHASE RUN_DIR [ITERATION]" >&2
  exit 2
fi
phase=$1
run_dir=$2
iteration=${3:-0}

launcher=${RECLAIF_LAUNCHER:-accelerate}
python=${PYTHON:-python3}

if [[ -n ${SLURM_JOB_ID:-} ]]; then
  num_machines=${NUM_MACHINES:-${SLURM_JOB_NUM_NODES:?SLURM_JOB_NUM_NODES is not set}}
  machine_rank=${MACHINE_RANK:-${SLURM_NODEID:?SLURM_NODEID is not set (run under srun)}}
  if [[ -z ${MAIN_PROCESS_IP:-} ]]; then
    main_process_ip=$(scontrol show hostnames "${SLURM_JOB_NODELIST:?}" | head -n 1)
  else
    main_process_ip=$MAIN_PROCESS_IP
  fi
  gpus_slurm=${SLURM_GPUS_PER_NODE:-}
  gpus=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-${gpus_slurm##*:}}}
else
  num_machines=${NUM_MACHINES:-1}
  machine_rank=${MACHINE_RANK:-0}
  main_process_ip=${MAIN_PROCESS_IP:-127.0.0.1}
  gpus=${GPUS_PER_NODE:-}
fi
if [[ -z $gpus ]]; then
  gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)
  [[ $gpus -gt 0 ]] || gpus=1
fi
if [[ $num_machines -gt 1 ]]; then
  default_accel=configs/accelerate/multi_node.yaml
else
  default_accel=configs/accelerate/single_node.yaml
fi

args_file=$(mktemp)
trap 'rm -f "$args_file"' EXIT
"$python" -m reclaif.cli.launcher render --null "$launcher" \
  phase="$phase" run_dir="$run_dir" iteration="$iteration" \
  num_machines="$num_machines" machine_rank="$machine_rank" \
  main_process_ip="$main_process_ip" main_process_port="${MAIN_PROCESS_PORT:-29500}" \
  nproc_per_node="$gpus" num_processes=$((num_machines * gpus)) \
  accelerate_config="${ACCELERATE_CONFIG:-$default_accel}" python="$python" >"$args_file"
mapfile -d '' -t cmd <"$args_file"
rm -f "$args_file"
trap - EXIT

echo "train.sh: node ${machine_rank}/${num_machines}: ${cmd[*]}" >&2
trap '' USR1
exec "${cmd[@]}"
