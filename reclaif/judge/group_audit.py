"""The audit of ranked groups (sampling.num_samples > 2), beside audit.py's verdict numbers.

A group row (the judge worker writes them to verdicts.jsonl) is
    {"example_id", "prompt", "answers": [N texts], "ranking": Ranking.to_json(), ...}
(reclaif.judge.ranking). Its comparisons are verdicts like any pair's: `pairwise_rows` hands
them to the pair audit (position consistency, ties, agreement with the labels). Here, per group:
- sizes: the top answer and the answers it beat (what S-DPO trains), and groups whose top
  beat no answer (nothing to train);
- left out: answers tied with the top, inconsistent with it, or ahead of it in a cycle;
- top has the label first: how often the judge's top answer is valid and puts a labelled item
  first (Hit@1), beside how often any of the group's answers does (the best the judge could
  pick) and the average answer (what a pick at random gets).
"""
from __future__ import annotations

from collections import Counter

from reclaif.judge.ranking import Ranking
from reclaif.parsing import parse_recommendation
from reclaif.records import Example, Item, Recommendation


def is_group(row: dict) -> bool:
    return "ranking" in row


def pairwise_rows(rows: list[dict]) -> list[dict]:
    """Verdict rows with each group row replaced by one row per comparison it holds
    ({example_id, a, b, verdict}); pair rows as they are."""
    out = []
    for row in rows:
        if not is_group(row):
            out.append(row)
            continue
        answers = row["answers"]
        out += [{"example_id": row["example_id"], "a": answers[c["a"]], "b": answers[c["b"]],
                 "verdict": c["verdict"]} for c in row["ranking"]["comparisons"]]
    return out


def _label_first(rec: Recommendation, example: Example) -> bool:
    return rec.valid and bool(rec.items) and example.labels.get(rec.items[0], 0) > 0


def group_audit(rows: list[dict], examples: dict[str, Example] | None,
                items: dict[str, Item] | None = None, top_k: int = 3) -> dict:
    """The group numbers of the group rows (module docstring); the label's only with
    `examples`."""
    rankings = [Ranking.from_json(r["ranking"]) for r in rows]
    sizes = [1 + len(r.beaten) for r in rankings if r.beaten]
    out: dict = {
        "groups": len(rows),
        "answers": {str(n): c for n, c in sorted(Counter(r.answers for r in rankings).items())},
        "sizes": {str(n): c for n, c in sorted(Counter(sizes).items())},
        "mean_size": sum(sizes) / len(sizes) if sizes else None,
        "no_winner": sum(1 for r in rankings if not r.beaten),
        "left_out": sum(len(r.tied) for r in rankings),
        "others": sum(r.answers - 1 for r in rankings),
    }
    if examples is None:
        return out
    top = anywhere = hits = total = counted = missing = 0
    for row, ranking in zip(rows, rankings):
        ex = examples.get(str(row["example_id"]))
        if ex is None:
            missing += 1
            continue
        local = items or {c: Item(id=c, title=c) for c in ex.candidates}
        first = [_label_first(parse_recommendation(a, ex, local, top_k), ex)
                 for a in row["answers"]]
        counted += 1
        top += first[ranking.top]
        anywhere += any(first)
        hits += sum(first)
        total += len(first)
    out["top_label_first"] = {
        "rate": top / counted if counted else None, "hits": top, "groups": counted,
        "any_answer": anywhere / counted if counted else None,
        "per_answer": hits / total if total else None, "missing_examples": missing}
    return out


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def format_groups(g: dict) -> list[str]:
    """The audit's lines for groups (reclaif judge audit)."""
    answers = ", ".join(f"{c} of {n}" for n, c in g["answers"].items())
    sizes = ", ".join(f"{n}: {c}" for n, c in g["sizes"].items()) or "none"
    lines = [f"groups:               {g['groups']} ({answers} answers); kept sizes {sizes}, "
             f"mean {_fmt(g['mean_size'])} ({g['no_winner']} without a winner)",
             f"left out of groups:   {g['left_out']} of {g['others']} answers (tied with the "
             "top, inconsistent with it, or ahead of it in a cycle)"]
    t = g.get("top_label_first")
    if t:
        lines.append(f"top has label first:  {_fmt(t['rate'])} ({t['hits']} of {t['groups']} "
                     f"groups; some answer has it in {_fmt(t['any_answer'])}, the average "
                     f"answer {_fmt(t['per_answer'])})")
    return lines
