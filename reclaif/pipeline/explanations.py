"""The report's explanation section (issue 31): per stage row, the share of reasons linked to the
history and of distinct key-feature sets (`judge/links.py`), and three answers a person can
check, each reason beside the item's own tags or fields and what it shares with the history.

It reads a finished stage's predictions.jsonl and the run's evaluation examples (the frozen
config's data path and split, with the hybrid evidence of evidence/eval.jsonl where the run has
it). A report must not fail for want of them: without config or data the section is left out.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from reclaif.atomic import read_jsonl
from reclaif.config_load import load_config
from reclaif.data import load_examples, load_items, resolve_data_dir
from reclaif.errors import ReclaifError
from reclaif.judge.links import checkable, explanation_shares
from reclaif.records import Example, Item, Recommendation

log = logging.getLogger(__name__)
EXAMPLES_PER_ROW = 3


@dataclass
class EvalContext:
    """What links are read against: the evaluation examples by id and the item catalog."""

    examples: dict[str, Example]
    items: dict[str, Item]


def eval_context(run_dir: Path) -> EvalContext | None:
    """The run's evaluation examples and items, or None (logged) where they cannot be read."""
    cfg_file = Path(run_dir) / "config.yaml"
    if not cfg_file.is_file():
        return None
    try:
        cfg = load_config(cfg_file)
        path = resolve_data_dir(cfg.data.path)
        examples = {e.id: e for e in load_examples(path, split=cfg.data.eval_split)}
        items = load_items(path)
        ev = Path(run_dir) / "evidence" / "eval.jsonl"
        if ev.is_file():  # hybrid: the evidence the model saw (transitions, ranks)
            for row in read_jsonl(ev):
                ex = examples.get(str(row.get("id")))
                if ex is not None and isinstance(row.get("evidence"), dict):
                    examples[ex.id] = dataclasses.replace(ex, evidence=row["evidence"])
    except (ReclaifError, OSError) as e:
        log.warning("report: explanation shares left out (%s)", e)
        return None
    return EvalContext(examples, items)


def _answers(run_dir: Path, stage: str, ctx: EvalContext) -> list[tuple[Example, Recommendation]]:
    f = Path(run_dir) / stage / "predictions.jsonl"
    if not f.is_file():
        return []
    out = []
    for row in read_jsonl(f):
        ex = ctx.examples.get(str(row.get("id")))
        if ex is None:
            continue
        try:
            out.append((ex, Recommendation.from_json(row)))
        except (KeyError, TypeError):  # a predictions file of ids only: nothing to explain
            continue
    return out


def share_lines(run_dir: Path, stages: list[tuple[str, str]], ctx: EvalContext | None
                ) -> list[str]:
    """One line per (label, stage) with valid answers: both shares and their counts."""
    if ctx is None:
        return []
    out = []
    for label, stage in stages:
        answers = _answers(run_dir, stage, ctx)
        shares = explanation_shares(answers, ctx.items)
        if shares.answers:
            out.append(f"- {label}: {shares.line()}")
    return out


def example_lines(run_dir: Path, stages: list[tuple[str, str]], ctx: EvalContext | None,
                  n: int = EXAMPLES_PER_ROW) -> list[str]:
    """Markdown: per stage, its first `n` valid answers as checkable lines."""
    if ctx is None:
        return []
    valid = {stage: [(ex, rec) for ex, rec in _answers(run_dir, stage, ctx) if rec.valid]
             for _, stage in stages}
    # The same examples in every row where enough are valid in all: rows compare directly.
    ids = [ex.id for ex, _ in next(iter(valid.values()), [])]
    common = [i for i in ids if all(any(ex.id == i for ex, _ in v) for v in valid.values())]
    out = []
    for label, stage in stages:
        shown = ([(ex, rec) for ex, rec in valid[stage] if ex.id in common[:n]]
                 if len(common) >= n else valid[stage][:n])
        if not shown:
            continue
        out += [f"**{label}:**", ""]
        for ex, rec in shown:
            out += checkable(ex, rec, ctx.items)
        out.append("")
    return out
