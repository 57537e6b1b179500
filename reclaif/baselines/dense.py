"""Dense bi-encoder retriever: cosine between the query (or mean history) and candidate vectors.

The paper's dense baseline is BLAIR (hyp1231/blair-roberta-base); any sentence-transformers
model name or directory works where it can be loaded. The default is the offline
all-MiniLM-L6-v2 the project embeds for diversity, loaded through the same loader.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reclaif.baselines.base import Ranker, history, order_by_scores
from reclaif.errors import ReclaifError
from reclaif.records import Example, Item
from reclaif.metrics.diversity import load_embedder


def load_model(name: str) -> Any:
    """The project's one sentence-embedder loader (reclaif.metrics.diversity)."""

    return load_embedder(name)


@dataclass
class DenseRanker(Ranker):
    model_name: str = "default"
    batch_size: int = 64
    seed: int = 0
    name: str = "dense"
    # a DiversityScorer with the same model: its item vectors are reused, not recomputed
    shared: Any = field(default=None, repr=False)
    _model: Any = field(default=None, repr=False)
    _items: dict[str, Item] = field(default_factory=dict, repr=False)
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _queries: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def fit(self, train: Sequence[Example], items: dict[str, Item]) -> None:
        """Loads the encoder; item vectors are computed lazily, once per item."""
        self._items = items
        if self._model is None:
            self._model = (self.shared.model if self.shared is not None
                           else load_model(self.model_name))

    def _encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._model.encode(texts, batch_size=self.batch_size,
                                             normalize_embeddings=True,
                                             show_progress_bar=False), dtype=np.float32)

    def prepare(self, examples: Sequence[Example]) -> None:
        """Embeds, in large batches, every catalog item these examples mention."""
        need = {i for ex in examples for i in ex.candidates} | {
            i for ex in examples if ex.task == "sequential" for i in ex.context}
        todo = sorted(i for i in need if i in self._items and i not in self._cache)
        if todo:
            vecs = (self.shared.embed(todo) if self.shared is not None
                    else self._encode([self._items[i].text() for i in todo]))
            self._cache.update(zip(todo, vecs))
        queries = sorted({str(ex.context) for ex in examples if ex.task == "retrieval"}
                         - set(self._queries))
        if queries:
            self._queries.update(zip(queries, self._encode(queries)))

    def _vector(self, item_id: str) -> np.ndarray | None:
        return self._cache.get(item_id) if item_id in self._items else None

    def scores(self, example: Example) -> np.ndarray:
        if self._model is None:
            raise ReclaifError("dense: call fit(train, items) before rank()")
        self.prepare([example])
        if example.task == "retrieval":
            user = self._queries[str(example.context)]
        else:
            vecs = [v for v in map(self._vector, history(example)) if v is not None]
            # no known history: nothing to match, every candidate ties (random order)
            user = np.mean(vecs, axis=0) if vecs else None
        out = np.zeros(len(example.candidates))
        if user is None:
            return out
        user = user / (np.linalg.norm(user) or 1.0)
        for n, c in enumerate(example.candidates):
            v = self._vector(c)
            out[n] = float(v @ user) if v is not None else -np.inf
        return out

    def rank(self, example: Example) -> list[str]:
        return order_by_scores(example, self.scores(example), self.seed)
