#!/usr/bin/env bash
# launch/run.sh — a whole RecLAIF run on ONE machine, each training phase under a launcher.
#
# Usage:  launch/run.sh CONFIG [RUN_DIR] [key=value ...]
#   CONFIG     run config (configs/*.yaml)
#   RUN_DIR    run directory (default runs/<config name>); rerun the same command to resume
#   key=value  config overrides for `reclaif run`
#
# The driver samples and judges with a local Ray, and starts every training phase with the
# "node" launch template of reclaif/pipeline/launcher.py: launch/train.sh, which renders
# $RECLAIF_LAUNCHER (accelerate by default) for this machine's GPUs. On several nodes use
# slurm/run.sbatch instead.
#
# Environment (optional; read by launch/train.sh): RECLAIF_LAUNCHER, ACCELERATE_CONFIG,
#   GPUS_PER_NODE, MAIN_PROCESS_PORT; PYTHON, the interpreter (default python3).
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 CONFIG [RUN_DIR] [key=value ...]" >&2
  exit 2
fi
config=$1
shift
run_dir=runs/$(basename "$config" .yaml)
if [[ $# -gt 0 && $1 != *=* ]]; then
  run_dir=$1
  shift
fi
python=${PYTHON:-python3}
launch_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

template=$("$python" -m reclaif.cli.launcher fill --yaml node launch_dir="$launch_dir")
exec "$python" -m reclaif.cli run --config "$config" --run-dir "$run_dir" \
  launch.mode=command "launch.template=$template" "$@"
