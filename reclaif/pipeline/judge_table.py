"""The report's judge tables, one row per iteration from its judge_stats.json: the verdicts
(ties, position disagreement, agreement with the labels, endpoint trouble), and where the judge
ranked groups of answers (sampling.num_samples > 2) their sizes, what was left out of them and
how often the top answer has the label first (reclaif.judge.group_audit)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from reclaif.run_layout import iteration_dirs

JUDGE_HEAD = ["Iteration", "Judged", "Pairs kept", "Ties", "Position disagreement",
              "Agrees with labels", "Failed", "Failed calls", "Unparseable", "Endpoint retries"]
GROUP_HEAD = ["Iteration", "Groups judged", "Answers each", "Groups kept", "Kept sizes",
              "Left out (tied with the top or not beaten)", "Top has label first",
              "Some answer has it", "Average answer"]

Table = tuple[str, list[str], list[list[str]]]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def judge_row(name: str, s: dict) -> list[str]:
    agree = (s.get("label_agreement") or {}).get("rate")
    consistency = s.get("position_consistency")
    return [name, str(s.get("judged", "-")), str(s.get("pairs_kept", "-")),
            _pct(s.get("tie_rate")), _pct(None if consistency is None else 1 - consistency),
            _pct(agree), str(s.get("failed", 0)), str(s.get("failed_calls", 0)),
            str(s.get("unparseable", 0)), str(s.get("endpoint_retries", 0))]


def group_row(name: str, s: dict) -> list[str]:
    g = s["groups"]
    t = g.get("top_label_first") or {}
    left = f"{g['left_out']} of {g['others']}" if g.get("others") else "0"
    return [name, str(g["groups"]), ", ".join(g["answers"]), str(s.get("groups_kept", "-")),
            ", ".join(f"{n}: {c}" for n, c in g["sizes"].items()) or "-", left,
            _pct(t.get("rate")), _pct(t.get("any_answer")), _pct(t.get("per_answer"))]


def judge_tables(run_dir: Path, read: Callable[[Path], Any]) -> list[Table]:
    """(title, header, rows) of each judge table the run has; `read` reads a JSON file."""
    stats = [(d.name, read(d / "judge_stats.json")) for d in iteration_dirs(run_dir)
             if (d / "judge_stats.json").exists()]
    tables: list[Table] = []
    if stats:
        tables.append(("Judge", JUDGE_HEAD, [judge_row(n, s) for n, s in stats]))
    groups = [(n, s) for n, s in stats if s.get("groups")]
    if groups:
        tables.append(("Answer groups", GROUP_HEAD, [group_row(n, s) for n, s in groups]))
    return tables
