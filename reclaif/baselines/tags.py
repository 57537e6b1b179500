"""Content overlap: a candidate scored by the tf-idf cosine between its features (an artist's
clean tags, a product's catalog fields: `reclaif.data.features`) and the history's.

It learns nothing from interactions, so it shows how much of a table's signal is in the item text
alone; on LastFM with tags aggregated over every HetRec user it also shows the leak of the
evaluated user's own tags (docs/RESULTS.md, issue 30).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from reclaif.baselines.base import Ranker, history, order_by_scores
from reclaif.data.features import feature_idf, item_features
from reclaif.records import Example, Item


def history_profile(hist: Sequence[str], items: dict[str, Item], domain: str,
                    idf: dict[str, float]) -> dict[str, float]:
    """The history's tf-idf vector: per casefolded feature, (history items having it) x idf."""
    out: dict[str, float] = {}
    for h in dict.fromkeys(hist):
        for f in dict.fromkeys(x.casefold() for x in item_features(items.get(h), domain)):
            out[f] = out.get(f, 0.0) + idf.get(f, 0.0)
    return out


def overlap_score(candidate: Item | None, profile: dict[str, float], domain: str,
                  idf: dict[str, float]) -> float:
    """Cosine between the candidate's idf-weighted features and the history profile; 0 when
    either side has no features."""
    own = {f: idf.get(f, 0.0) for f in (x.casefold() for x in item_features(candidate, domain))}
    dot = sum(w * profile.get(f, 0.0) for f, w in own.items())
    norm = math.sqrt(sum(w * w for w in own.values())) * math.sqrt(
        sum(w * w for w in profile.values()))
    return dot / norm if norm > 0 else 0.0


@dataclass
class TagRanker(Ranker):
    """Candidates by `overlap_score` with the history; ties (no shared feature) random."""

    seed: int = 0
    name: str = "tags"
    items: dict[str, Item] = field(default_factory=dict, repr=False)

    def fit(self, train: Sequence[Example], items: dict[str, Item]) -> None:
        self.items = items

    def scores(self, example: Example) -> np.ndarray:
        idf = feature_idf(self.items, example.domain)
        profile = history_profile(history(example), self.items, example.domain, idf)
        return np.array([overlap_score(self.items.get(c), profile, example.domain, idf)
                         for c in example.candidates])

    def rank(self, example: Example) -> list[str]:
        return order_by_scores(example, self.scores(example), self.seed)
