"""Ranking relevance at a cut-off K: Prec@K, NDCG@K (binary or graded), Hit@K, MRR.

`ranked` is a list of item ids, best first; `labels` maps item id → graded relevance (> 0 means
relevant; unlabeled ids have 0). A repeated id counts once, at its first position, so no metric
can exceed 1. An invalid answer is scored as an empty list (0 everywhere) by the caller.

Hand-written (a few lines each) because the library versions score a vector of predicted
scores over all items (sklearn's ndcg_score, torchmetrics' retrieval metrics): they cannot say
"this answer named only 2 of k items" or "this answer was invalid", which ranked LLM output needs.
"""
from __future__ import annotations

import math


def _top(ranked: list[str], k: int) -> list[str]:
    if k <= 0:
        raise ValueError(f"cut-off k must be positive, got {k}")
    return list(dict.fromkeys(ranked))[:k]


def precision_at_k(ranked: list[str], labels: dict[str, float], k: int) -> float:
    """Relevant items among the first k, divided by k (a list shorter than k is not excused)."""
    return sum(1 for i in _top(ranked, k) if labels.get(i, 0) > 0) / k


def hit_at_k(ranked: list[str], labels: dict[str, float], k: int) -> float:
    """1.0 if any of the first k items is relevant, else 0.0."""
    return 1.0 if any(labels.get(i, 0) > 0 for i in _top(ranked, k)) else 0.0


def ndcg_at_k(ranked: list[str], labels: dict[str, float], k: int, graded: bool = True) -> float:
    """DCG@k / ideal DCG@k with log2(rank + 1) discounts (rank from 1).

    graded: gain = the label's relevance; otherwise gain = 1 for every relevant item. The ideal
    DCG ranks all labeled items by gain; with no relevant label the score is 0.
    """
    def gain(g: float) -> float:
        return (g if graded else 1.0) if g > 0 else 0.0

    dcg = sum(gain(labels.get(i, 0)) / math.log2(r + 2) for r, i in enumerate(_top(ranked, k)))
    ideal = sorted((gain(g) for g in labels.values()), reverse=True)[:k]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr(ranked: list[str], labels: dict[str, float]) -> float:
    """1 / rank of the first relevant item over the whole list; 0 if none is relevant."""
    for r, i in enumerate(dict.fromkeys(ranked), 1):
        if labels.get(i, 0) > 0:
            return 1.0 / r
    return 0.0
