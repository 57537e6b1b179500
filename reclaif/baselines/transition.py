"""Item-to-item transitions: how many training users went from one item straight to another.

The simplest collaborative signal of a next-item task, and one an LLM can read off a prompt line
("14 listeners next"). Scores back off over the last three history items
(weights 1, 1/2, 1/4), each transition count divided by how often its source item was left at
all, so a hub item's many successors do not drown a rarer item's few.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reclaif.atomic import atomic_write_json
from reclaif.baselines.base import Ranker, history, order_by_scores, targets
from reclaif.errors import DataError
from reclaif.records import Example, Item

BACKOFF = (1.0, 0.5, 0.25)


@dataclass
class TransitionRanker(Ranker):
    seed: int = 0
    name: str = "transition"
    # source item → next item → distinct users who made that step
    counts: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    # source item → distinct (user, next item) steps out of it
    totals: dict[str, int] = field(default_factory=dict, repr=False)

    def fit(self, train: Sequence[Example], items: dict[str, Item]) -> None:
        users: dict[tuple[str, str], set[str]] = defaultdict(set)
        for ex in train:
            hist, tgt = history(ex), targets(ex)
            if hist and tgt:
                users[(hist[-1], tgt[0])].add(ex.user or ex.id)
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        for (src, dst), who in users.items():
            counts[src][dst] = len(who)
        self.counts = dict(counts)
        self.totals = {src: sum(d.values()) for src, d in self.counts.items()}

    def count(self, src: str, dst: str) -> int:
        """Distinct training users who went from `src` straight to `dst`."""
        return self.counts.get(src, {}).get(dst, 0)

    def scores(self, example: Example) -> np.ndarray:
        hist = history(example)
        out = np.zeros(len(example.candidates))
        for w, src in zip(BACKOFF, reversed(hist[-len(BACKOFF):])):
            row, total = self.counts.get(src), self.totals.get(src, 0)
            if not row:
                continue
            out += w * np.array([row.get(c, 0) for c in example.candidates]) / (total + 1.0)
        return out

    def rank(self, example: Example) -> list[str]:
        return order_by_scores(example, self.scores(example), self.seed)

    def save(self, path: Path) -> None:
        atomic_write_json(path, {"counts": self.counts})

    @classmethod
    def load(cls, path: Path, seed: int = 0) -> "TransitionRanker":
        try:
            counts = json.loads(path.read_text(encoding="utf-8"))["counts"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}: not a saved transition model ({e}); delete the run's "
                            "evidence/ folder and its manifest entry to refit") from None
        r = cls(seed=seed, counts=counts)
        r.totals = {src: sum(d.values()) for src, d in counts.items()}
        return r
