"""`reclaif train sft|dpo`: one training phase on a run directory, in whatever process a launcher
(accelerate launch, torchrun, deepspeed, srun) or nobody started. The config is the run's frozen
RUN/config.yaml unless --config names another; overrides apply on top.

In the control layer (it was train/entry.py): checking the frozen config is the run store's
job, and the trainers (train/) import nothing of pipeline/."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from reclaif.config import load_config
from reclaif.errors import ConfigError
from reclaif.pipeline.store import RunStore


def _config(args: argparse.Namespace):
    run_dir = Path(args.run_dir)
    path = args.config or run_dir / "config.yaml"
    if not Path(path).exists():
        raise ConfigError(f"{path}: no config (give --config, or a run dir with config.yaml)")
    if not args.config:
        RunStore(run_dir).check_config_file()  # the frozen one, as recorded, or one line
    return load_config(path, args.overrides), run_dir


def _quiet_other_ranks() -> None:
    from reclaif.train.strategy import launcher_env

    if launcher_env()[0] != 0:
        logging.getLogger().setLevel(logging.WARNING)


def cmd_train_sft(args: argparse.Namespace) -> int:
    from reclaif.train.sft import run_sft

    cfg, run_dir = _config(args)
    _quiet_other_ranks()
    run_sft(cfg, run_dir)
    return 0


def cmd_train_dpo(args: argparse.Namespace) -> int:
    from reclaif.train.dpo import run_dpo

    if args.iteration < 1:
        raise ConfigError("train dpo: --iteration N (1-based) is required")
    cfg, run_dir = _config(args)
    _quiet_other_ranks()
    run_dpo(cfg, run_dir, args.iteration)
    return 0
