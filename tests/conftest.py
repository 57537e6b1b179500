"""Shared fixtures: the real data beside the repo, and the bundled sample."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests never reach a hub: everything they load is on disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch's OpenMP threads spin between parallel regions by default. On a 2-core machine that
# other jobs also load, a spinning thread takes the core its partner needs: generating 64 tokens
# took 140 s with 2 threads that spin and 17 s with 2 that sleep (OMP_WAIT_POLICY=PASSIVE).
# Read when torch loads, so it must be set before the first import; subprocesses (the driver,
# its Ray workers, launched trainers) inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real LastFM, Beauty, ESCI files); CI lays it beside the clone."""
    assert SHARED_DATA.is_dir(), f"{SHARED_DATA} missing: the real data must sit beside the repo"
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
