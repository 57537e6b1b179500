"""Paired differences between two evaluations of the same examples: what the report says of the
last iteration against SFT, and `reclaif compare` of two runs (e.g. S-DPO against pairwise DPO
from one SFT checkpoint).

Two eval.json results (metrics.evaluate.evaluate_rankings) are paired by example id; a metric
pairs only the examples both scored (explainability has no value for an invalid answer, and the
base model may be scored on the first n only), and says how many those were.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reclaif.metrics.evaluate import paired_bootstrap_ci


@dataclass(frozen=True)
class PairedDiff:
    """mean(a) − mean(b) over the `n` examples both scored, with its paired 95% interval."""

    metric: str
    a: float
    b: float
    diff: float
    lo: float
    hi: float
    n: int

    def line(self, label_a: str, label_b: str) -> str:
        return (f"{label_a} − {label_b}, {self.metric}: {self.diff:+.3f} "
                f"[{self.lo:+.3f}, {self.hi:+.3f}] (paired bootstrap, same {self.n} examples)")


def default_metrics(result: dict[str, Any]) -> list[str]:
    """The paper's table for the task (Hit@1, NDCG@3 sequential; NDCG@5 retrieval), then
    ValidRatio and explainability."""
    ranked = ["hit@1", "ndcg@3"] if "hit@1" in result.get("metrics", {}) else ["ndcg@5"]
    return ranked + ["valid_ratio", "explainability"]


def paired_differences(a: dict[str, Any], b: dict[str, Any], metrics: list[str] | None = None,
                       resamples: int = 1000) -> list[PairedDiff]:
    """a − b per metric (default: `default_metrics(a)`) over the examples both scored; a metric
    neither result has per example, or that shares no scored example, is left out."""
    pa, pb = a.get("per_example", {}), b.get("per_example", {})
    out = []
    for metric in metrics or default_metrics(a):
        name = "valid" if metric == "valid_ratio" else metric
        if name not in pa or name not in pb:
            continue
        theirs = dict(zip(pb.get("ids", []), pb[name]))
        both = [(float(x), float(theirs[i])) for i, x in zip(pa.get("ids", []), pa[name])
                if x is not None and theirs.get(i) is not None]
        ci = paired_bootstrap_ci([x for x, _ in both], [y for _, y in both], resamples)
        if ci is None:
            continue
        n = len(both)
        out.append(PairedDiff(metric, sum(x for x, _ in both) / n, sum(y for _, y in both) / n,
                              *ci, n))
    return out
