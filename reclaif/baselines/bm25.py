"""BM25 over item text (bm25s): the query (retrieval) or the history's text (sequential).

The index holds the whole catalog so that IDF reflects the catalog, not one candidate list;
only the candidates' scores are read out.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import bm25s
import numpy as np

from reclaif.baselines.base import Ranker, history, order_by_scores
from reclaif.errors import ReclaifError
from reclaif.records import Example, Item


def _tokenize(texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


@dataclass
class BM25Ranker(Ranker):
    k1: float = 1.5
    b: float = 0.75
    seed: int = 0
    name: str = "bm25"
    _retriever: bm25s.BM25 | None = field(default=None, repr=False)
    _row: dict[str, int] = field(default_factory=dict, repr=False)
    _items: dict[str, Item] = field(default_factory=dict, repr=False)

    def fit(self, train: Sequence[Example], items: dict[str, Item]) -> None:
        """Indexes the catalog; BM25 learns nothing from training examples."""
        if not items:
            raise ReclaifError("bm25: the item catalog is empty")
        ids = list(items)
        self._items = items
        self._row = {i: n for n, i in enumerate(ids)}
        self._retriever = bm25s.BM25(k1=self.k1, b=self.b)
        self._retriever.index(_tokenize([items[i].text() for i in ids]), show_progress=False)

    def query_text(self, example: Example) -> str:
        if example.task == "retrieval":
            return str(example.context)
        return " ".join(self._items[i].text() for i in history(example) if i in self._items)

    def scores(self, example: Example) -> np.ndarray:
        if self._retriever is None:
            raise ReclaifError("bm25: call fit(train, items) before rank()")
        tokens = _tokenize([self.query_text(example)])[0]
        # an empty query (no known history items, all stop words) scores every candidate 0
        all_scores = self._retriever.get_scores(tokens) if tokens else None
        return np.array([all_scores[self._row[c]] if all_scores is not None and c in self._row
                         else 0.0 for c in example.candidates])

    def rank(self, example: Example) -> list[str]:
        return order_by_scores(example, self.scores(example), self.seed)
