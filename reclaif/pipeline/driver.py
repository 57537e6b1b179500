"""The driver (`reclaif run`): SFT from teacher responses, then DPO iterations, end to end.

`recipe` is Algorithm 1 of the paper, one line per step:

    base eval → teacher data → SFT → SFT eval →
    for i in 1..N: sample (Ray) → judge (Ray) → pairs → reference log-probs + DPO → eval → report

The steps are in `pipeline/phases/`. Every phase is recorded in the run directory's manifest
when it finishes and skipped when the driver is rerun; sampling and judging resume at shard
granularity. Phases talk only through files in the run directory.
"""
from __future__ import annotations

from pathlib import Path

from reclaif.config import RunConfig
from reclaif.distributed.pool import init_ray
from reclaif.errors import ReclaifError
from reclaif.pipeline.phases import (Run, base_examples, evaluate, evidence, judge, open_run,
                                     pairs, sample, teacher_data, train)
from reclaif.pipeline.report import write_report
from reclaif.run_layout import BASE, SFT, stage_name
from reclaif.train.policy import base_model

__all__ = ["PHASES", "open_run", "recipe", "run_phase"]


def recipe(run: Run) -> Path:
    """Runs (or resumes) the whole run; returns its report."""
    cfg, store = run.cfg, run.store
    try:
        evidence(run)
        if base_examples(run):
            evaluate(run, BASE, base_model(cfg), base_examples(run))
        if cfg.sft.enabled:
            teacher_data(run)
            train(run, "sft", 0)
            evaluate(run, SFT, str(store.checkpoint(SFT)))
        for i in range(1, cfg.dpo.iterations + 1):
            stage = stage_name(i)
            sample(run, i)
            judge(run, i)
            pairs(run, i)
            train(run, "dpo", i)
            evaluate(run, stage, str(store.checkpoint(stage)))
    finally:
        run.samplers.release()
    return write_report(store.root)


PHASES = ("sft", "sample", "judge")


def run_phase(cfg: RunConfig, run_dir: str | Path, phase: str, iteration: int = 0) -> Path:
    """One phase on a run directory (sft: teacher data + SFT; sample; judge: verdicts and
    pairs of `iteration`, 1-based); returns the rewritten report."""
    if phase not in PHASES:
        raise ReclaifError(f"phase '{phase}' is not one of {list(PHASES)}")
    if phase == "sample" and iteration < 1:
        raise ReclaifError(f"sample: iteration {iteration} must be at least 1 (1-based)")
    run = open_run(cfg, run_dir)
    evidence(run)
    if phase in ("sample", "judge") and cfg.ray.enabled:
        init_ray(cfg.ray.address, cfg.ray.num_cpus)
    try:
        if phase == "sft":
            teacher_data(run)
            train(run, "sft", 0)
        elif phase == "sample":
            sample(run, iteration)
        else:
            judge(run, iteration)
            pairs(run, iteration)
        return write_report(run.store.root)
    finally:
        run.samplers.release()
