"""Judges (paper §4.2): llm (the pairwise prompt, position-swapped), rubric (offline,
label-aware, data-derived) and panel (majority of several); plus the 1-100 explainability scorer.

`make_judge(cfg, items, top_k)` is the one place a `JudgeConfig` becomes a judge. LLM clients
come from `client_factory(spec)` (default `reclaif.llm.make_client`), so tests and the Ray
judge actors can hand in their own.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from reclaif.config import JudgeConfig, LLMSpec, choices
from reclaif.errors import ConfigError
from reclaif.judge.base import Judge, preference_pair
from reclaif.judge.explainability import (ExplainabilityScorer, grounding,
                                          make_explainability_scorer)
from reclaif.judge.llm_judge import LLMJudge, parse_judgment
from reclaif.judge.panel import PanelJudge, cohen_kappa
from reclaif.judge.rubric import RUBRIC_DESCRIPTION, RubricJudge
from reclaif.llm import make_client
from reclaif.llm.base import LLMClient
from reclaif.records import Item

KINDS = choices(JudgeConfig, "kind")


def make_judge(cfg: JudgeConfig, items: dict[str, Item], top_k: int,
               client_factory: Callable[[LLMSpec], LLMClient] | None = None) -> Judge:
    """The judge `cfg.kind` names. A panel builds one member per entry of `cfg.panel` with the
    rest of `cfg` unchanged (so an llm member uses `cfg.llm`)."""
    if len(cfg.weights) != 3:
        raise ConfigError(f"judge.weights: need 3 numbers (relevance, diversity, "
                          f"explainability), got {cfg.weights}")
    if cfg.min_margin < 0:
        raise ConfigError(f"judge.min_margin: {cfg.min_margin} must be >= 0")
    if cfg.kind == "rubric":
        return RubricJudge(items, top_k, weights=cfg.weights, min_margin=cfg.min_margin)
    if cfg.kind == "llm":
        client = (client_factory or make_client)(cfg.llm)
        return LLMJudge(client, items, top_k, position_swap=cfg.position_swap,
                        weights=cfg.weights)
    if cfg.kind == "panel":
        if len(cfg.panel) < 2:
            raise ConfigError(f"judge.panel: a panel needs at least 2 judge kinds, "
                              f"got {cfg.panel}")
        members = choices(JudgeConfig, "panel")
        bad = [k for k in cfg.panel if k not in members]
        if bad:
            raise ConfigError(f"judge.panel: {bad} not among {list(members)}")
        members = [make_judge(replace(cfg, kind=k, panel=[]), items, top_k, client_factory)
                   for k in cfg.panel]
        return PanelJudge(members, names=list(cfg.panel))
    raise ConfigError(f"judge.kind: '{cfg.kind}' is not one of {list(KINDS)}")


__all__ = ["ExplainabilityScorer", "Judge", "KINDS", "LLMJudge", "PanelJudge",
           "RUBRIC_DESCRIPTION", "RubricJudge", "cohen_kappa", "grounding", "make_judge",
           "make_explainability_scorer", "parse_judgment", "preference_pair"]
