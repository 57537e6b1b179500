"""What a checkpoint of a run was trained on, for `reclaif eval --methods model:PATH`'s held-out
check: the run's training examples as its frozen config chose them (its SFT, sampling and DPO
input). Here, beside the run directory's reader, so the baselines' table knows no runs."""
from __future__ import annotations

from collections.abc import Sequence

from reclaif.comparison.table import TrainingInput
from reclaif.data.splits import run_splits
from reclaif.evidence import run_of_checkpoint
from reclaif.run_config import load_run_config


def checkpoint_inputs(methods: Sequence[str]) -> dict[str, TrainingInput | None]:
    """For each model:PATH method, its run's training input; None for a model outside a run
    directory (its training input is unknown). Other methods are left out."""
    out: dict[str, TrainingInput | None] = {}
    for m in methods:
        if not m.startswith("model:"):
            continue
        root = run_of_checkpoint(m.partition(":")[2])
        if root is None:
            out[m] = None
            continue
        cfg = load_run_config(root)
        splits = run_splits(cfg.data)
        out[m] = TrainingInput(splits.train + splits.windows,
                               f"run {root} '{cfg.data.train_split}' split of {cfg.data.path} "
                               f"({len(splits.train):,}, SFT/sampling/DPO)")
    return out
