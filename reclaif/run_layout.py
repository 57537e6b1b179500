"""The run directory's layout (docs/ARCHITECTURE.md, "Run directory"): the name of every stage
and of the files the phases hand each other, as pure path arithmetic (no I/O).

Why a core module and not `pipeline/store.py` alone: the trainers (`train/`) must find their
inputs and outputs in a run directory too, including the previous iteration's checkpoint, and
`train/` may not import `pipeline/`. Passing every path into `run_dpo` from the driver instead
would leave `reclaif train dpo --iteration I` (a process a launcher starts, with no driver
around it) computing them itself, a second spelling. So the names live here, once; `RunStore`
builds on `RunLayout` (adding the manifest, shards and directory creation), the trainers use
`RunLayout` directly, and nothing else spells `iter-NNN`.
"""
from __future__ import annotations

import re
from pathlib import Path

BASE = "base"
SFT = "sft"
ITERATION_GLOB = "iter-*"  # every DPO iteration's stage directory, for Path.glob
_ITERATION = re.compile(r"iter-(\d{3,})")


def stage_name(iteration: int) -> str:
    """DPO iteration i's stage: 'iter-001', 'iter-002', ... (three digits sort as numbers up to
    999 iterations; more still parse)."""
    if iteration < 1:
        raise ValueError(f"DPO iterations count from 1, got {iteration}")
    return f"iter-{iteration:03d}"


def iteration_of(stage: str) -> int | None:
    """The iteration a stage name is for ('iter-002' → 2); None for base, sft and the rest."""
    m = _ITERATION.fullmatch(stage)
    return int(m.group(1)) if m else None


def is_iteration(stage: str) -> bool:
    return iteration_of(stage) is not None


def iteration_dirs(root: str | Path) -> list[Path]:
    """Every DPO iteration's stage directory under `root`, in iteration order. Only names
    `iteration_of` accepts: a user's `iter-002.bak` or `iter-old` beside them is not a stage."""
    found = [(iteration_of(p.name), p) for p in Path(root).glob(ITERATION_GLOB) if p.is_dir()]
    return [p for i, p in sorted((i, p) for i, p in found if i is not None)]


def training_stage(phase: str, iteration: int) -> str:
    """The stage a training phase writes: 'sft', or iteration i's for 'dpo'."""
    return SFT if phase == "sft" else stage_name(iteration)


class RunLayout:
    """Paths inside one run directory. Creates nothing: writers make the parents they need."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # stages -----------------------------------------------------------------------------
    def stage(self, name: str) -> Path:
        return self.root / name

    def iteration(self, iteration: int) -> Path:
        return self.root / stage_name(iteration)

    def checkpoint(self, stage: str) -> Path:
        """'sft' → sft/checkpoint; 'iter-002' → iter-002/checkpoint (an HF model directory)."""
        return self.root / stage / "checkpoint"

    # a training phase's own files ---------------------------------------------------------
    def train_state(self, stage: str) -> Path:
        """train_state/step-N resume points, dropped once the checkpoint is saved."""
        return self.root / stage / "train_state"

    def train_metrics(self, stage: str) -> Path:
        return self.root / stage / "train_metrics.json"

    def curves(self, stage: str) -> Path:
        """TensorBoard event files of a training phase (RUN/tb/STAGE)."""
        return self.root / "tb" / stage

    def train_log(self, phase: str, iteration: int) -> Path:
        """A launched trainer's output (launch.mode: command)."""
        return self.root / "logs" / f"train-{phase}-{iteration:03d}.log"

    # what phases hand each other ------------------------------------------------------------
    def teacher(self) -> Path:
        """The teacher's answers SFT distils."""
        return self.root / SFT / "teacher.jsonl"

    def pairs(self, iteration: int) -> Path:
        """Iteration i's preference pairs, DPO's input."""
        return self.iteration(iteration) / "pairs.jsonl"

    def groups(self, iteration: int) -> Path:
        """Iteration i's answer groups (sampling.num_samples > 2), S-DPO's input."""
        return self.iteration(iteration) / "groups.jsonl"

    def ref_logps(self, iteration: int) -> Path:
        """Iteration i's reference log-probs, computed once before its first DPO update."""
        return self.iteration(iteration) / "ref_logps.jsonl"
