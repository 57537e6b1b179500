# shellcheck shell=bash
# slurm/common.sh — helpers sourced by slurm/run.sbatch and slurm/train.sbatch; not a job.
#
# Reads: SLURM_JOB_ID, SLURM_JOB_NODELIST, SLURM_JOB_NUM_NODES, SLURM_GPUS_ON_NODE,
#        SLURM_GPUS_PER_NODE, SLURM_RESTART_COUNT (Slurm sets them in the batch shell),
#        MAIN_PROCESS_PORT (default 29500), RECLAIF_VENV (a virtualenv to activate, optional),
#        RAY_HEAD_IP (the head's address, optional: reclaif_head_ip).
# Exports for launch/train.sh and the driver: RECLAIF_HEAD, NUM_MACHINES, GPUS_PER_NODE,
#        MAIN_PROCESS_IP, MAIN_PROCESS_PORT.
# The training step is always named "reclaif-train" (TEMPLATES["srun"]), so the batch shell
# can signal it alone.

reclaif_log() { echo "[reclaif $(date -u +%FT%TZ)] $*" >&2; }

# Sizes of the allocation, from Slurm's own variables (never hard-coded).
reclaif_allocation() {
  if [[ -n ${RECLAIF_VENV:-} ]]; then
    # shellcheck disable=SC1091
    source "$RECLAIF_VENV/bin/activate"
  fi
  local hosts
  mapfile -t hosts < <(scontrol show hostnames "${SLURM_JOB_NODELIST:?not inside a Slurm job}")
  export RECLAIF_HEAD=${hosts[0]}
  export NUM_MACHINES=${SLURM_JOB_NUM_NODES:-${#hosts[@]}}
  local per_node=${SLURM_GPUS_PER_NODE:-}
  export GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-${per_node##*:}}
  if [[ -z $GPUS_PER_NODE ]]; then
    reclaif_log "no GPU count in SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE: submit with --gpus-per-node"
    return 1
  fi
  export MAIN_PROCESS_IP=$RECLAIF_HEAD
  export MAIN_PROCESS_PORT=${MAIN_PROCESS_PORT:-29500}
  reclaif_log "job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0}: ${NUM_MACHINES} node(s)" \
    "x ${GPUS_PER_NODE} GPU(s), head ${RECLAIF_HEAD}"
}

# The address the Ray head binds to and the other nodes dial: RAY_HEAD_IP, else the first of
# this host's addresses that is not loopback (`hostname --ip-address` gives 127.0.1.1 on
# Debian-style /etc/hosts, which no other node can reach). 1 when there is none.
reclaif_head_ip() {
  local ip
  if [[ -n ${RAY_HEAD_IP:-} ]]; then
    echo "$RAY_HEAD_IP"
    return 0
  fi
  for ip in $(hostname --all-ip-addresses 2>/dev/null) $(hostname --ip-address 2>/dev/null); do
    case $ip in
      127.* | ::1 | fe80:*) ;;
      *) echo "$ip"; return 0 ;;
    esac
  done
  reclaif_log "error: no address of $(hostname) other than loopback; set RAY_HEAD_IP"
  return 1
}

# Job step ids (JOB.STEP) of the running training steps.
reclaif_training_steps() {
  squeue --noheader --steps --jobs "$SLURM_JOB_ID" --format '%i %j' |
    awk '$2 == "reclaif-train" { print $1 }'
}

# SIGUSR1 to every process of the training step: the trainers checkpoint and exit 0, the
# launchers (which ignore SIGUSR1, see launch/train.sh) then exit with them.
reclaif_checkpoint_training() {
  local step
  for step in $(reclaif_training_steps); do
    reclaif_log "SIGUSR1 -> step $step (checkpoint and exit)"
    scancel --signal=USR1 "$step" || true
  done
}

# Waits until no training step runs, at most $1 seconds; 1 if one still runs.
reclaif_wait_training() {
  local deadline=$((SECONDS + $1))
  while [[ -n $(reclaif_training_steps) ]]; do
    if ((SECONDS >= deadline)); then
      return 1
    fi
    sleep 5
  done
}

# The end of a run that must continue: checkpoint, then put the same job back in the queue
# (same id, same script and arguments; the rerun resumes from the run directory).
reclaif_checkpoint_and_requeue() {
  local grace=$1
  reclaif_checkpoint_training
  if ! reclaif_wait_training "$grace"; then
    reclaif_log "training still running after ${grace}s; requeueing anyway (resume from the last periodic checkpoint)"
  fi
  reclaif_log "requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
}
