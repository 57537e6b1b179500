"""The one protocol every baseline implements (the held-out check is reclaif.data.heldout).

A ranker learns (or not) from training examples, then orders an Example's candidates. It never
sees labels at ranking time, and ties are broken by a seeded per-example shuffle so that no
ranker can profit from the order a loader happened to write the candidates in.

Every ranker subclasses `Ranker` (PEP 544's explicit form): what only some rankers have (a
batched `prepare`, text answers, a training log) has its default here, and the table calls it
on every ranker without probing.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from reclaif.errors import ReclaifError
from reclaif.records import Example, Item, Recommendation


@runtime_checkable
class Ranker(Protocol):
    name: str

    def fit(self, train: Sequence[Example], items: dict[str, Item]) -> None:
        """Learns from training examples (no-op for rankers that do not learn)."""
        ...

    def rank(self, example: Example) -> list[str]:
        """The example's candidates, best first: always a permutation of `candidates`."""
        ...

    def prepare(self, examples: Sequence[Example]) -> None:
        """Work for many examples at once before `rank` is asked of each (an LLM's batched
        generate, a model's batched scores); nothing by default."""

    def answer(self, example: Example) -> Recommendation | None:
        """The parsed text answer behind `rank(example)`, for rankers that answer in text
        (LLMs: their own validity and explanations); None for those that only order."""
        return None

    def fit_log(self) -> list[dict]:
        """Per-epoch records of the last fit ({epoch, loss, val_mrr}) for rankers that train in
        epochs; empty otherwise."""
        return []


def example_rng(seed: int, example_id: str) -> np.random.Generator:
    """A generator that depends on (seed, example id) only, not on evaluation order."""
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def order_by_scores(example: Example, scores: Sequence[float], seed: int = 0) -> list[str]:
    """Candidates sorted by descending score; equal scores in a seeded random order."""
    if len(scores) != len(example.candidates):
        raise ReclaifError(f"example {example.id}: {len(scores)} scores for "
                           f"{len(example.candidates)} candidates")
    tie = example_rng(seed, example.id).random(len(scores))
    # lexsort sorts by the last key first: score descending, then the random tie-breaker
    order = np.lexsort((tie, -np.asarray(scores, dtype=np.float64)))
    return [example.candidates[i] for i in order]


def history(example: Example) -> list[str]:
    """The item ids a sequential example's user interacted with, oldest first."""
    if example.task != "sequential" or isinstance(example.context, str):
        raise ReclaifError(f"example {example.id}: expected a sequential example with a "
                           f"list of history item ids, got task={example.task!r}")
    return list(example.context)


def targets(example: Example) -> list[str]:
    """The relevant items of an example, best first (for next-item tasks: the one target)."""
    return [i for i, g in sorted(example.labels.items(), key=lambda kv: -kv[1]) if g > 0]
