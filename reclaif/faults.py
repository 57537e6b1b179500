"""Deterministic fault injection for the reliability tests.

`RECLAIF_FAULTS="sample:1,train"` makes the process that reaches point `sample:1` (shard 1 of the
sample phase) or `train` kill itself with SIGKILL, once: a marker file in RECLAIF_FAULT_DIR
records that the fault fired, so the rerun that follows goes through. Unset, this costs one
dictionary lookup per call.

At the core level (it imports nothing of reclaif) so that every layer with an injection point
(the trainers, the Ray workers, the driver) can reach it without importing another layer.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path


def maybe_fail(point: str) -> None:
    faults = os.environ.get("RECLAIF_FAULTS")
    if not faults or point not in {f.strip() for f in faults.split(",")}:
        return
    marker_dir = Path(os.environ.get("RECLAIF_FAULT_DIR", "/tmp/reclaif-faults"))
    marker_dir.mkdir(parents=True, exist_ok=True)
    marker = marker_dir / point.replace(":", "_").replace("/", "_")
    if marker.exists():
        return
    marker.write_text("fired\n")
    os.kill(os.getpid(), signal.SIGKILL)
