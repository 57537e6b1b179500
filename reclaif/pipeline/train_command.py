"""`reclaif train sft|dpo`: one training phase on a run directory, in whatever process a launcher
(accelerate launch, torchrun, deepspeed, srun) or nobody started. The config is the run's frozen
RUN/config.yaml unless another config file is named; overrides apply on top.

In the control layer (it was train/entry.py): checking the frozen config is the run store's
job, and the trainers (train/) import nothing of pipeline/."""
from __future__ import annotations

import logging
from pathlib import Path

from reclaif.config import RunConfig
from reclaif.config_load import load_config
from reclaif.errors import ConfigError
from reclaif.pipeline.store import RunStore


def phase_config(run_dir: str | Path, config: str | Path | None = None,
                 overrides: list[str] | None = None) -> RunConfig:
    """`config`, or the run directory's frozen config.yaml (as the store recorded it)."""
    run_dir = Path(run_dir)
    path = config or run_dir / "config.yaml"
    if not Path(path).exists():
        raise ConfigError(f"{path}: no config (name a config file, or a run directory with "
                          "config.yaml)")
    if not config:
        RunStore(run_dir).check_config_file()  # the frozen one, as recorded, or one line
    return load_config(path, overrides)


def _quiet_other_ranks() -> None:
    from reclaif.train.strategy import launcher_env  # torch: only in the process that trains

    if launcher_env()[0] != 0:
        logging.getLogger().setLevel(logging.WARNING)


def train_phase(phase: str, cfg: RunConfig, run_dir: str | Path, iteration: int = 0) -> None:
    """SFT, or DPO iteration `iteration` (1-based), on `run_dir`'s data, in this process."""
    if phase == "sft":
        from reclaif.train.sft import run_sft  # torch: only in the process that trains

        _quiet_other_ranks()
        run_sft(cfg, Path(run_dir))
    elif phase == "dpo":
        from reclaif.train.dpo import run_dpo  # torch: only in the process that trains

        if iteration < 1:
            raise ConfigError(f"train dpo: iteration {iteration} must be at least 1 (1-based)")
        _quiet_other_ranks()
        run_dpo(cfg, Path(run_dir), iteration)
    else:
        raise ConfigError(f"train: phase '{phase}' is not one of ['sft', 'dpo']")
