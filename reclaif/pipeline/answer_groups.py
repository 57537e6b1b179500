"""The pairs phase for ranked answers (sampling.num_samples > 2): the judge's group rows in
verdicts.jsonl → groups.jsonl (AnswerGroup: the top answer and every answer it beat, S-DPO's
input), pairs.jsonl (the top against each of them, the pairwise losses' and `reclaif export`'s
input) and judge_stats.json (the audit with its group numbers).

An answer the top beat leaves its group where a pair would be dropped (docs/ARCHITECTURE.md,
"Capped answers"): the same text as the top, or finished while the top was capped (DPO would
push its stop down and running on to the cap up). A capped rejected answer stays.
"""
from __future__ import annotations

from pathlib import Path

from reclaif.atomic import atomic_write_json, atomic_write_jsonl
from reclaif.judge.audit import audit
from reclaif.judge.ranking import Ranking
from reclaif.records import AnswerGroup, Example, Item


def answer_group(row: dict) -> tuple[AnswerGroup | None, int]:
    """The group of a judge's group row (None: its top beat no answer it may be trained
    against), and how many beaten answers the capped-answer rule dropped."""
    ranking = Ranking.from_json(row["ranking"])
    answers, top = row["answers"], ranking.top
    n = len(answers)

    def per_answer(key: str) -> list:  # sample files written before a field have none of it
        return (list(row.get(key) or []) + [None] * n)[:n]

    truncated, ids, logps = per_answer("truncated"), per_answer("token_ids"), per_answer("logps")
    keep, capped = [], 0
    for j in ranking.beaten:
        if answers[j] == answers[top]:
            continue  # identical texts give DPO a zero gradient; not a preference
        if truncated[top] and not truncated[j]:
            capped += 1
            continue
        keep.append(j)
    if not keep:
        return None, capped
    return AnswerGroup(
        example_id=str(row["example_id"]), prompt=row["prompt"], chosen=answers[top],
        rejected=[answers[j] for j in keep],
        verdicts=[ranking.verdict_against(j).to_json() for j in keep],
        chosen_truncated=bool(truncated[top]),
        rejected_truncated=[bool(truncated[j]) for j in keep],
        chosen_ids=ids[top], rejected_ids=[ids[j] for j in keep],
        chosen_logp=logps[top], rejected_logps=[logps[j] for j in keep],
        sampled_by=dict(row.get("sampled_by") or {})), capped


def endpoint_counts(rows: list[dict]) -> dict[str, int]:
    """Endpoint trouble, summed from the per-record marks the judge workers write (so the
    counts survive actor restarts and resumed runs); the report shows them."""
    return {"failed": sum(1 for r in rows if r.get("failed")), "judged": len(rows),
            "unparseable": sum(1 for r in rows if r.get("unparseable")),
            "failed_calls": sum(int(r.get("failed_calls", 0)) for r in rows),
            "endpoint_retries": sum(int(r.get("retries", 0)) for r in rows)}


def write_groups(rows: list[dict], examples: dict[str, Example], items: dict[str, Item],
                 top_k: int, groups_file: Path, pairs_file: Path,
                 stats_file: Path) -> tuple[list[AnswerGroup], dict]:
    """Writes the groups, their pairs and the judge's stats of one iteration's group rows;
    returns the groups and the stats."""
    groups: list[AnswerGroup] = []
    capped = 0
    for row in rows:
        if row.get("failed"):
            continue
        group, dropped = answer_group(row)
        capped += dropped
        if group is not None:
            groups.append(group)
    pairs = [p for g in groups for p in g.pairs()]
    atomic_write_jsonl(groups_file, [g.to_json() for g in groups])
    atomic_write_jsonl(pairs_file, [p.to_json() for p in pairs])
    stats = audit([r for r in rows if not r.get("failed")], examples, items, top_k)
    stats.update(groups_kept=len(groups), pairs_kept=len(pairs),
                 dropped_capped_over_finished=capped,
                 capped_rejected=sum(sum(g.rejected_truncated) for g in groups),
                 **endpoint_counts(rows))
    atomic_write_json(stats_file, stats)
    return groups, stats
