"""How much of a model's explanation is about the user (issue 31), for the audit and the report.

Two shares per set of answers (one model row): of the reasons, how many link their item to the
history (`reason_link`: a tag or field both really have, named with a history item or a stated
key feature; or the evidence's transition from the last item); of the answers, how many
distinct key-feature sets there are (the history items an answer names beside a feature are
left out, so "electronic (A, B)" and "electronic (C)" are the same feature). A model that writes
"electronic, trance" for every user has a low second share whatever its wording. Beside the
first share, its bound: how many picked items have a link to cite at all (`linkable`); where
that is low, the ranking limits the linked share, not the writing.

`checkable` writes one answer as lines a person can verify: each reason beside the item's own
tags or fields, what it really shares with the history, and the link the rubric found.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from reclaif.data.features import item_features, shared_features
from reclaif.judge.explainability import content_words, linkable, reason_link
from reclaif.records import Example, Item, Recommendation

_NAMES_RE = re.compile(r"\s*\([^()]*\)\s*$")
SHOWN_FEATURES = 5  # of an item's own tags or fields, in a checkable line


@dataclass
class ExplanationShares:
    """Counts behind the two shares; `answers` are the valid answers counted."""

    answers: int = 0
    reasons: int = 0
    linked: int = 0
    linkable: int = 0  # reasons whose item has a link to cite (`linkable`): linked's bound
    feature_sets: int = 0
    distinct_feature_sets: int = 0

    @property
    def linked_share(self) -> float | None:
        return self.linked / self.reasons if self.reasons else None

    @property
    def linkable_share(self) -> float | None:
        return self.linkable / self.reasons if self.reasons else None

    @property
    def distinct_share(self) -> float | None:
        return self.distinct_feature_sets / self.feature_sets if self.feature_sets else None

    def to_json(self) -> dict:
        return {**asdict(self), "linked_share": self.linked_share,
                "linkable_share": self.linkable_share,
                "distinct_feature_share": self.distinct_share}

    def line(self) -> str:
        """One line for reports: both shares with their counts."""
        if not self.answers:
            return "no valid answers"
        fmt = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
        return (f"reasons linked to the history {fmt(self.linked_share)} ({self.linked} of "
                f"{self.reasons}); distinct key-feature sets {fmt(self.distinct_share)} "
                f"({self.distinct_feature_sets} of {self.feature_sets} answers); picks with a "
                f"link to cite {fmt(self.linkable_share)} ({self.linkable} of {self.reasons})")


def feature_set(key_features: list[str]) -> frozenset[str]:
    """An answer's key features without the history names it gives beside each, casefolded."""
    return frozenset(" ".join(_NAMES_RE.sub("", f).casefold().split())
                     for f in key_features if f.strip())


def _key_words(rec: Recommendation) -> set[str]:
    return set().union(*(content_words(f) for f in rec.key_features)) if rec.key_features \
        else set()


def explanation_shares(answers: Iterable[tuple[Example, Recommendation]],
                       items: dict[str, Item]) -> ExplanationShares:
    """The two shares over valid answers (an invalid answer's reasons are not counted)."""
    out = ExplanationShares()
    sets: set[frozenset[str]] = set()
    for ex, rec in answers:
        if not rec.valid:
            continue
        out.answers += 1
        words = _key_words(rec)
        for n, item in enumerate(rec.items):
            reason = rec.reasons[n] if n < len(rec.reasons) else ""
            out.reasons += 1
            linked = reason_link(reason, item, ex, items, words) is not None
            out.linked += linked
            out.linkable += linked or linkable(item, ex, items)  # a linked reason had a link
        fs = feature_set(rec.key_features)
        if fs:
            out.feature_sets += 1
            sets.add(fs)
    out.distinct_feature_sets = len(sets)
    return out


def _title(item_id: str, items: dict[str, Item]) -> str:
    item = items.get(item_id)
    return item.title if item else item_id


def checkable(ex: Example, rec: Recommendation, items: dict[str, Item]) -> list[str]:
    """Markdown lines for one answer: the history, the key features, and per reason the facts
    that decide it (the item's own features, what it shares with the history, the link)."""
    lines = [f"- {ex.id}: history {'; '.join(_title(h, items) for h in ex.context[-10:])}"
             if not isinstance(ex.context, str) else f"- {ex.id}: query {ex.context}",
             f"  - key features: {'; '.join(rec.key_features) or '(none)'}"]
    words = _key_words(rec)
    for n, item in enumerate(rec.items):
        reason = rec.reasons[n] if n < len(rec.reasons) else ""
        own = item_features(items.get(item), ex.domain)[:SHOWN_FEATURES]
        link = reason_link(reason, item, ex, items, words)
        if isinstance(ex.context, str):
            facts = f"has: {', '.join(own) or '(no listed features)'}"
        else:
            shared = shared_features(item, ex.context, items, ex.domain)
            with_history = "; ".join(f"{f} ({', '.join(_title(h, items) for h in hs[:3])})"
                                     for f, hs in shared[:3]) or "nothing"
            facts = f"has: {', '.join(own) or '(no listed features)'}; shares {with_history}"
        lines.append(f"  - {n + 1}. {_title(item, items)}: \"{reason or '(no reason)'}\" "
                     f"({facts}; link: {link or 'none'})")
    return lines
