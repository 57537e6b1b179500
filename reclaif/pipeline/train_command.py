"""One training phase, SFT or DPO iteration i, in this process: what `reclaif train sft|dpo`
runs (in whatever process a launcher, accelerate launch, torchrun, deepspeed or srun, or nobody
started) and what the driver runs with `launch.mode: inprocess`. One dispatch for both.

In the control layer (it was train/entry.py): the trainers (train/) import nothing of pipeline/."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from reclaif.config import RunConfig
from reclaif.errors import ConfigError


def _quiet_other_ranks() -> None:
    from reclaif.train.strategy import launcher_env  # torch: only in the process that trains

    if launcher_env()[0] != 0:
        logging.getLogger().setLevel(logging.WARNING)


def train_phase(phase: str, cfg: RunConfig, run_dir: str | Path, iteration: int = 0
                ) -> dict[str, Any]:
    """SFT, or DPO iteration `iteration` (1-based), on `run_dir`'s data, in this process;
    returns the phase's training metrics."""
    if phase == "sft":
        from reclaif.train.sft import run_sft  # torch: only in the process that trains

        _quiet_other_ranks()
        return run_sft(cfg, Path(run_dir))
    if phase == "dpo":
        from reclaif.train.dpo import run_dpo  # torch: only in the process that trains

        if iteration < 1:
            raise ConfigError(f"train dpo: iteration {iteration} must be at least 1 (1-based)")
        _quiet_other_ranks()
        return run_dpo(cfg, Path(run_dir), iteration)
    raise ConfigError(f"train: phase '{phase}' is not one of ['sft', 'dpo']")
