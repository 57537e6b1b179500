"""Held-out discipline: the one check between a training input (SFT, sampling, DPO, a learned
baseline's fit, a trained model's run) and the examples it is evaluated on.

The rule, in order (README, "Held-out discipline"):
1. An evaluation example id that is also a training id: error.
2. The split unit on both sides: error. For retrieval the unit is the query (compared
   lower-cased, spaces collapsed); for sequential tasks it is the user, where both sides name
   users. Beauty's official split is leave-last-out per user (the same users, later targets),
   so there users may repeat (`by_user=False`); rule 3 still holds there.
3. A sequential evaluation example with the same user, history and target as a training
   example: error.
4. The same history and target from a different or unnamed user is a chance duplicate: short
   listening prefixes of popular artists recur across users (6 of the 2,767 S-DPO LastFM
   validation prompts equal an LLaRA training row). Such examples are excluded from evaluation
   and reported, so no evaluated example is ever a training input, whoever wrote it. More than
   `MAX_DUPLICATE_FRACTION` of the evaluation set excluded means the splits overlap: error.
Callers check whole splits, then take a subset (--limit, max_eval_examples) of what is kept:
the overlap fraction is a property of the splits, and a subset must not trip it by chance.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from reclaif.errors import DataError
from reclaif.records import Example

log = logging.getLogger(__name__)

MAX_DUPLICATE_FRACTION = 0.01
# Domains whose official split is leave-last-out per user (users on both sides by design).
LEAVE_LAST_OUT_DOMAINS = frozenset({"beauty"})


@dataclass
class HeldOut:
    """The evaluation examples that passed, and the chance duplicates that were excluded."""

    kept: list[Example]
    excluded: list[str] = field(default_factory=list)
    n_evaluation: int = 0
    what: str = "training"

    def note(self) -> str:
        """One line for tables and reports: what was checked and what was excluded."""
        if not self.excluded:
            return f"passed against the {self.what} input"
        shown = ", ".join(self.excluded[:6]) + (", ..." if len(self.excluded) > 6 else "")
        return (f"passed against the {self.what} input; {len(self.excluded)} of "
                f"{self.n_evaluation:,} evaluation examples repeat a training history and "
                f"target of another or unnamed user and are excluded ({shown})")


def _query(ex: Example) -> str:
    return " ".join(str(ex.context).lower().split())


def _sequence(ex: Example) -> tuple:
    return tuple(ex.context), tuple(sorted(ex.relevant()))


def _by_user(evaluation: Sequence[Example]) -> bool:
    return not any(ex.domain in LEAVE_LAST_OUT_DOMAINS for ex in evaluation)


def check_held_out(train: Sequence[Example], evaluation: Sequence[Example],
                   what: str = "training", by_user: bool | None = None) -> HeldOut:
    """Applies the module's rule; raises DataError on a leak, returns what may be evaluated.

    `by_user`: whether the split is by user (rule 2); None decides from the evaluation
    examples' domain (leave-last-out for `LEAVE_LAST_OUT_DOMAINS`, by user otherwise)."""
    by_user = _by_user(evaluation) if by_user is None else by_user
    train_ids = {ex.id for ex in train}
    queries = {_query(ex) for ex in train if ex.task == "retrieval"}
    users = {ex.user for ex in train if ex.user is not None}
    writers: dict[tuple, set[str | None]] = {}  # (history, target) → users who wrote it
    for ex in train:
        if ex.task == "sequential":
            writers.setdefault(_sequence(ex), set()).add(ex.user)
    kept: list[Example] = []
    excluded: list[str] = []
    for ex in evaluation:
        where = f"held-out check: evaluation example {ex.id!r}"
        if ex.id in train_ids:
            raise DataError(f"{where} is also a {what} example (same id); evaluate on a split "
                            "the model and baselines were not trained on")
        if ex.task == "retrieval":
            if _query(ex) in queries:
                raise DataError(f"{where} has the same query as a {what} example; split by "
                                "query")
            kept.append(ex)
            continue
        if by_user and ex.user is not None and ex.user in users:
            raise DataError(f"{where}: its user {ex.user!r} is also in the {what} input; "
                            "split by user")
        who = writers.get(_sequence(ex))
        if who is None:
            kept.append(ex)
        elif ex.user is not None and ex.user in who:
            raise DataError(f"{where} has the same user, history and target as a {what} "
                            "example")
        else:
            excluded.append(ex.id)
    if len(excluded) > MAX_DUPLICATE_FRACTION * len(evaluation):
        raise DataError(f"held-out check: {len(excluded)} of {len(evaluation)} evaluation "
                        f"examples repeat a {what} history and target (first: {excluded[0]!r}); "
                        f"more than {MAX_DUPLICATE_FRACTION:.0%} means the {what} and "
                        "evaluation splits overlap")
    result = HeldOut(kept=kept, excluded=excluded, n_evaluation=len(evaluation), what=what)
    if excluded:
        log.warning("%s", result.note())
    return result
