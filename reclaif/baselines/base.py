"""The one protocol every baseline implements, and the held-out check that guards them.

A ranker learns (or not) from training examples, then orders an Example's candidates. It never
sees labels at ranking time, and ties are broken by a seeded per-example shuffle so that no
ranker can profit from the order a loader happened to write the candidates in.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from reclaif.errors import ReclaifError
from reclaif.records import Example, Item

log = logging.getLogger(__name__)


@runtime_checkable
class Ranker(Protocol):
    name: str

    def fit(self, train: Sequence[Example], items: dict[str, Item]) -> None:
        """Learns from training examples (no-op for rankers that do not learn)."""
        ...

    def rank(self, example: Example) -> list[str]:
        """The example's candidates, best first: always a permutation of `candidates`."""
        ...


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


def _leak_key(ex: Example) -> tuple:
    if ex.task == "retrieval":
        return ("q", " ".join(str(ex.context).lower().split()))
    return ("s", tuple(ex.context), tuple(sorted(targets(ex))))


def assert_held_out(train: Sequence[Example], evaluation: Sequence[Example],
                    tolerance: float = 0.01) -> list[str]:
    """Raises ReclaifError when an evaluation example is in the training input.

    Leaks are: the same example id; for retrieval the same query; for sequential tasks the same
    user with the same history and target. Where either side has no user id, two different
    users can share a short history by chance (6 of the 2,767 S-DPO LastFM validation prompts
    equal an LLaRA training row, from users LLaRA keeps apart), so such matches are tolerated up
    to `tolerance` of the evaluation set and returned for the caller to report; more than that
    means the splits overlap. Returns the ids of the tolerated matches.
    """
    train_ids = {ex.id for ex in train}
    by_key: dict[tuple, set[str | None]] = {}
    for ex in train:
        by_key.setdefault(_leak_key(ex), set()).add(ex.user)
    same_id = [ex.id for ex in evaluation if ex.id in train_ids]
    if same_id:
        raise ReclaifError(f"held-out check: {len(same_id)} evaluation example ids are also "
                           f"training examples (first: {same_id[0]!r}); evaluate on a split "
                           "the baselines were not trained on")
    hard, soft = [], []
    for ex in evaluation:
        users = by_key.get(_leak_key(ex))
        if users is None:
            continue
        if ex.task == "retrieval":
            hard.append(ex.id)
        elif ex.user is not None and ex.user in users:
            hard.append(ex.id)
        elif ex.user is None or None in users:
            soft.append(ex.id)
    what = "query" if evaluation and evaluation[0].task == "retrieval" else "user, history and target"
    if hard:
        raise ReclaifError(f"held-out check: {len(hard)} evaluation examples have the same "
                           f"{what} as a training example (first: {hard[0]!r}); split by "
                           "user (sequential) or query (retrieval)")
    if soft and len(soft) > tolerance * len(evaluation):
        raise ReclaifError(f"held-out check: {len(soft)} of {len(evaluation)} evaluation "
                           f"examples repeat a training history and target (first: {soft[0]!r}) "
                           f"and no user ids tell them apart; more than {tolerance:.0%} means "
                           "the training and evaluation splits overlap")
    if soft:
        log.info("held-out check: %d evaluation examples share history and target with a "
                 "training row of an unnamed user (kept; under %.0f%%)", len(soft),
                 100 * tolerance)
    return soft
