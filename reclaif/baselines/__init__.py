"""Baselines of the paper's Tables 2 and 3 behind one protocol (`base.Ranker`): random and
popularity floors, item-to-item transitions, BM25, tag overlap (tf-idf), a dense bi-encoder
and SASRec. They read examples and items only; `reclaif.comparison.methods.make_ranker` builds
one (or an LLM method) from its `--methods` name."""
from __future__ import annotations

from reclaif.baselines.base import Ranker

__all__ = ["Ranker"]
