"""Shared fixtures: the real data in the repository (tests/data), the optional full data beside
it (../shared/data), and the repository root."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO / "tests" / "data"
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests never reach a hub: everything they load is on disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Runs the tests start fit their own evidence models, never reusing the user's cache (or each
# other's); tests/test_evidence_cache.py exercises the cache in tmp_path.
os.environ.setdefault("RECLAIF_EVIDENCE_CACHE", "off")
# torch's OpenMP threads spin between parallel regions by default. On a 2-core machine that
# other jobs also load, a spinning thread takes the core its partner needs: generating 64 tokens
# took 140 s with 2 threads that spin and 17 s with 2 that sleep (OMP_WAIT_POLICY=PASSIVE).
# Read when torch loads, so it must be set before the first import; subprocesses (the driver,
# its Ray workers, launched trainers) inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# `.venv/bin/python -m pytest` without an activated venv: the launchers and tools the tests start
# by name (torchrun, accelerate, deepspeed, ray, shellcheck) live beside this interpreter.
_BIN = os.path.dirname(sys.executable)
if _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = os.pathsep.join(p for p in (_BIN, os.environ.get("PATH", "")) if p)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """tests/data: small real subsets of LastFM, Beauty and ESCI in the layout of ../shared/data
    (tests/data/SOURCE.md says what each holds and how tests/make_test_data.py made it)."""
    assert REAL_DATA.is_dir(), f"{REAL_DATA} missing: it is part of the repository"
    return REAL_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, the full real files, for the few tests that need a whole release; they
    are skipped where it is absent (a fresh clone, CI)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the full real data in {SHARED_DATA} (absent); the in-repo subsets "
                    "in tests/data cover the other tests")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
