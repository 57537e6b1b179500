"""A panel of judges: each member judges every pair, the majority decides, agreement is measured.

Majority: the label ('a', 'b' or 'tie') with strictly the most votes wins; a split with no single
most-voted label is a tie. Agreement between members is Cohen's kappa over those three labels,
for every pair of members, accumulated over all verdicts the panel has given.
"""
from __future__ import annotations

import json
from collections import Counter
from itertools import combinations

from reclaif.judge.base import Judge, check_pairs
from reclaif.records import Example, Scores, Verdict

LABELS = ("a", "b", "tie")


def cohen_kappa(x: list[str], y: list[str]) -> float:
    """Cohen's kappa of two raters' labels. Written out rather than taken from scikit-learn
    (installed here) for one reason: sklearn returns NaN when both raters give one constant label
    (chance agreement 1); two identical raters agree perfectly, so that case is 1.0 here."""
    if len(x) != len(y):
        raise ValueError(f"cohen_kappa: {len(x)} and {len(y)} labels")
    n = len(x)
    if n == 0:
        return float("nan")
    observed = sum(a == b for a, b in zip(x, y)) / n
    cx, cy = Counter(x), Counter(y)
    expected = sum(cx[k] * cy[k] for k in set(cx) | set(cy)) / (n * n)
    if expected >= 1.0:
        return 1.0 if observed >= 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def majority(choices: list[str]) -> str:
    counts = Counter(choices).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return "tie"
    return counts[0][0]


def _mean(scores: list[Scores]) -> Scores:
    n = len(scores)
    return Scores(relevance=round(sum(s.relevance for s in scores) / n, 3),
                  diversity=round(sum(s.diversity for s in scores) / n, 3),
                  explainability=round(sum(s.explainability for s in scores) / n, 3))


class PanelJudge(Judge):
    def __init__(self, judges: list[Judge], names: list[str] | None = None):
        if len(judges) < 2:
            raise ValueError(f"judge.panel: a panel needs at least 2 judges, got {len(judges)}")
        self.judges = judges
        self.names = names or [f"judge{i}" for i in range(len(judges))]
        if len(set(self.names)) != len(self.names):
            self.names = [f"{n}#{i}" for i, n in enumerate(self.names)]
        self.votes: list[list[str]] = [[] for _ in judges]  # per member, every verdict's label

    def compare_many(self, examples: list[Example],
                     pairs: list[tuple[str, str]]) -> list[Verdict]:
        check_pairs(examples, pairs)
        per_judge = [j.compare_many(examples, pairs) for j in self.judges]
        out = []
        for i in range(len(examples)):
            members = [vs[i] for vs in per_judge]
            for votes, v in zip(self.votes, members):
                votes.append(v.choice)
            choice = majority([v.choice for v in members])
            raw = json.dumps({name: {"choice": v.choice, "consistent": v.consistent,
                                     "raw_text": v.raw_text}
                              for name, v in zip(self.names, members)}, ensure_ascii=False)
            # Verdict's contract: inconsistent implies a tie, so only a tied panel with an
            # inconsistent member is reported inconsistent.
            consistent = choice != "tie" or all(v.consistent for v in members)
            out.append(Verdict(scores_a=_mean([v.scores_a for v in members]),
                               scores_b=_mean([v.scores_b for v in members]),
                               choice=choice, raw_text=raw, consistent=consistent))
        return out

    def agreement(self) -> dict:
        """Pairwise Cohen's kappa between members (a/b/tie labels) and their mean."""
        pairs = {f"{self.names[i]}~{self.names[j]}": cohen_kappa(self.votes[i], self.votes[j])
                 for i, j in combinations(range(len(self.judges)), 2)}
        vals = [k for k in pairs.values() if k == k]
        return {"n": len(self.votes[0]), "kappa": pairs,
                "mean_kappa": sum(vals) / len(vals) if vals else float("nan")}

    def stats(self) -> dict:
        return {"agreement": self.agreement(),
                "members": {n: j.stats() for n, j in zip(self.names, self.judges)}}
