"""Which model each step of the recipe starts from, one rule for the driver (what iteration i
samples with) and the DPO recipe (where its policy starts, which model is its reference).
Imports no torch: the driver process asks it too."""
from __future__ import annotations

from pathlib import Path

from reclaif.config import RunConfig
from reclaif.llm.models import resolve_model
from reclaif.run_layout import SFT, RunLayout, stage_name


def base_model(cfg: RunConfig) -> str:
    """The recommender before any training: the base row, and the start where SFT is off."""
    return resolve_model(cfg.recommender.model, cfg.recommender.cache_dir or None)


def policy_and_reference(cfg: RunConfig, run_dir: str | Path, iteration: int) -> tuple[str, str]:
    """DPO iteration i's (policy, reference): the policy is the previous iteration's checkpoint
    (the SFT model, or the base where SFT is off, for i = 1), which also samples iteration i's
    answers; the reference is that same model, or the SFT one with `dpo.reference: sft`."""
    layout = RunLayout(run_dir)
    first = str(layout.checkpoint(SFT)) if cfg.sft.enabled else base_model(cfg)
    previous = str(layout.checkpoint(stage_name(iteration - 1))) if iteration > 1 else first
    reference = first if cfg.dpo.reference == "sft" else previous
    return previous, reference
