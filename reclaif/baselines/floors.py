"""The two floors every learned ranker must clear: seeded random order and item popularity."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from reclaif.baselines.base import Ranker, example_rng, order_by_scores, targets
from reclaif.records import Example, Item


@dataclass
class RandomRanker(Ranker):
    """A uniformly random permutation per example, reproducible from (seed, example id)."""

    seed: int = 0
    name: str = "random"

    def fit(self, train: Sequence[Example], items: dict[str, Item]) -> None:
        pass

    def rank(self, example: Example) -> list[str]:
        order = example_rng(self.seed, example.id).permutation(len(example.candidates))
        return [example.candidates[i] for i in order]


@dataclass
class PopularityRanker(Ranker):
    """Candidates by how often they were a training target (relevant item); ties random."""

    seed: int = 0
    name: str = "popularity"
    counts: Counter = field(default_factory=Counter)

    def fit(self, train: Sequence[Example], items: dict[str, Item]) -> None:
        self.counts = Counter(t for ex in train for t in targets(ex))

    def rank(self, example: Example) -> list[str]:
        return order_by_scores(example, [self.counts[c] for c in example.candidates], self.seed)
