"""SFT teachers (paper §4.1, "Fine-tuning the Recommender"): who writes the answers SFT distils.

The paper distils Claude 3 Sonnet (`LLMTeacher` over a Bedrock client does exactly that). Without
an endpoint, `OfflineTeacher` writes answers from the data itself: it reads the labels, so its
rankings put the true items first. That is what makes it a teacher rather than a baseline, and
why every report names it as data-derived (TEACHER_DESCRIPTION) rather than as an LLM.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from reclaif.config import LLMSpec, TeacherConfig, choices
from reclaif.errors import ConfigError
from reclaif.evidence.models import read_evidence
from reclaif.llm import make_client
from reclaif.llm.base import LLMClient
from reclaif.data.features import (distinctive_features, feature_idf, item_features,
                                    shared_features)
from reclaif.records import Example, Item
from reclaif.parsing import format_recommendation
from reclaif.prompts import render_recommender

TEACHER_DESCRIPTION = (
    "Teacher: the offline teacher, a data-derived stand-in for the paper's Claude 3 Sonnet "
    "teacher, used because no LLM endpoint was configured. It sees the labels. Its key "
    "preferences are what sets the history apart: the tags (music) or brand, item form, scent "
    "and similar fields (beauty) of the history items, weighted by how many history items have "
    "them times their inverse catalogue frequency (so 'rock' does not win every history), each "
    "named with a history item that shows it; for product search, the query's terms. Its "
    "ranking puts the labelled items first, best grade first, and fills the rest of the top-k "
    "greedily by feature overlap with the key preferences minus overlap with the items already "
    "chosen (in hybrid mode, in the evidence's order instead). Each reason names what the item "
    "shares with the history (a tag or field both really have, and a history item that has "
    "it, the shortest-named one to save tokens) or that it follows the user's last item; where "
    "nothing links them, it says the item is a less obvious pick and what the item is. In "
    "hybrid mode the item's evidence rank follows as a supporting figure. Its answers are "
    "templated text in the canonical answer format, deterministic per seed: SFT on them "
    "teaches the format and label-aware rankings, "
    "not an LLM's reasoning."
)

_QUERY_STOP = frozenset("a an the and or of for to in on with without by from at is are my your "
                        "me i you it that this these those be as not no".split())
_WORD_RE = re.compile(r"[0-9a-z]+")
SHORT_TITLE_WORDS = 4   # a product named in a reason or key preference: its first words
# History items named beside a key preference and beside a reason's shared feature: answers
# must stay under the proof's 128 new tokens (measured on its 256 SFT prompts).
NAMED_HOLDERS = {"key": 1, "reason": 1}


def _words(text: str) -> set[str]:
    return {w for w in _WORD_RE.findall(text.lower()) if w not in _QUERY_STOP and len(w) > 1}


def _feature_words(feature: str) -> set[str]:
    """Words of a feature's value: 'brand: Olaplex' matches on 'olaplex', never on 'brand'."""
    return _words(feature.split(": ", 1)[-1])


class Teacher(Protocol):
    """What SFT distils: one answer per example, in the recommender's answer format."""

    def respond(self, example: Example) -> str:
        ...

    def respond_many(self, examples: list[Example]) -> list[str]:
        """One answer per example, in order; an LLM teacher batches its calls."""
        return [self.respond(ex) for ex in examples]


@dataclass(frozen=True)
class Preference:
    """One key preference: the phrase the answer states, the words that match it, and (for
    histories) the feature and the history items that have it."""

    phrase: str
    words: frozenset[str]
    feature: str = ""
    holders: tuple[str, ...] = ()


class OfflineTeacher(Teacher):
    """Answers in the canonical format, built from labels and item text (see the module doc)."""

    def __init__(self, items: dict[str, Item], top_k: int, seed: int = 0):
        if top_k < 1:
            raise ConfigError(f"top_k: {top_k} must be at least 1")
        self.items, self.top_k, self.seed = items, top_k, seed
        self._idf: dict[str, dict[str, float]] = {}  # per domain, computed once

    def idf(self, domain: str) -> dict[str, float]:
        if domain not in self._idf:
            self._idf[domain] = feature_idf(self.items, domain)
        return self._idf[domain]

    def title(self, item_id: str, domain: str) -> str:
        """An item's name as answers cite it: a product's first words (the whole title is in
        the prompt; every answer token costs training time), an artist's whole name."""
        item = self.items.get(item_id)
        name = item.title if item else item_id
        words = name.split()
        return name if domain == "music" or len(words) <= SHORT_TITLE_WORDS else \
            " ".join(words[:SHORT_TITLE_WORDS]).rstrip(" ,;:-–—&|")

    def _names(self, ids: tuple[str, ...] | list[str], domain: str, where: str) -> str:
        """Any holder shows the feature: the shortest names (in UTF-8 bytes, which tracks
        tokens better than characters for CJK names) cost the fewest tokens."""
        names = sorted((self.title(i, domain) for i in ids),
                       key=lambda t: len(t.encode()))  # stable: history order breaks ties
        return ", ".join(names[:NAMED_HOLDERS[where]])

    def key_preferences(self, example: Example) -> list[Preference]:
        """Up to two preferences that set this history apart: features (tags, catalog fields)
        by history items having them x their idf, those two or more items share first, each
        named with the history items that show it."""
        if isinstance(example.context, str):
            terms = [w for w in _WORD_RE.findall(example.context.lower())
                     if w not in _QUERY_STOP and len(w) > 1]
            prefs = [Preference(f"Looking for: {example.context.strip()}", frozenset(terms))]
            prefs += [Preference(f"Key term: {t}", frozenset({t}))
                      for t in dict.fromkeys(terms)][:2]
            return prefs
        ranked = distinctive_features(example.context, self.items, example.domain,
                                      self.idf(example.domain), k=10 ** 6)
        # Two, stated briefly: every answer token costs SFT, sampling and DPO time, and the
        # quickstart's 135M model must learn the whole format within its token budget.
        top = [(f, h) for f, h in ranked if len(h) >= 2][:2]
        top += [(f, h) for f, h in ranked if (f, h) not in top][:max(0, 2 - len(top))]
        prefs = [Preference(f"{f} ({self._names(h, example.domain, 'key')})",
                            frozenset(_feature_words(f)), f, tuple(h)) for f, h in top]
        if not prefs:  # no tags or fields at all: the history's own names are all there is
            names = [self.title(i, example.domain) for i in example.context[-2:]]
            prefs = [Preference(f"Similar to {', '.join(names)}",
                                frozenset(_words(" ".join(names))))]
        return prefs

    def rank(self, example: Example, prefs: list[Preference]) -> list[str]:
        """Labelled items first (best grade, then candidate order), then relevance − redundancy."""
        want = min(self.top_k, len(set(example.candidates)))
        rng = random.Random(f"{self.seed}:{example.id}")
        labelled = sorted((c for c in dict.fromkeys(example.candidates)
                           if example.labels.get(c, 0) > 0),
                          key=lambda c: -example.labels[c])
        chosen = labelled[:want]
        pref_words = set().union(*(p.words for p in prefs)) if prefs else set()
        rest = [c for c in dict.fromkeys(example.candidates) if c not in chosen]
        if example.evidence:
            # Hybrid: after the labels, the evidence's own order (the candidates are listed
            # best first), so SFT teaches when the evidence is right and the labels overrule it.
            return chosen + rest[:want - len(chosen)]
        rng.shuffle(rest)  # the seed decides among equally good fillers
        while len(chosen) < want and rest:
            seen = set().union(*(self._words(c, example.domain) for c in chosen)) if chosen else set()

            def value(c: str) -> float:
                w = self._words(c, example.domain)
                return len(w & pref_words) - 0.5 * len(w & seen)
            best = max(rest, key=value)  # max keeps the first maximum: shuffled order breaks ties
            chosen.append(best)
            rest.remove(best)
        return chosen

    def _words(self, item_id: str, domain: str) -> set[str]:
        return set().union(*(_feature_words(f) for f in
                             item_features(self.items.get(item_id), domain)))

    def reason(self, item_id: str, example: Example, prefs: list[Preference]) -> str:
        """Why this item for this user: what it shares with the history (a feature both
        really have, and the history items that have it), or that it follows the user's last
        item; else, honestly, that it is a less obvious pick and what it is. In hybrid mode
        the evidence's rank follows as a supporting figure, never as the whole reason."""
        item = self.items.get(item_id)
        title = item.title if item else item_id
        feats = item_features(item, example.domain)
        if isinstance(example.context, str):  # retrieval: the query's own words are the features
            hits = sorted(_words(example.context) & (_words(title) | self._words(item_id,
                                                                                  example.domain)))
            shown = f"{', '.join(feats[:2])}; " if feats else ""
            text = (f"{shown}matches the query terms {', '.join(hits)}." if hits
                    else f"{shown}a related option for the query.")
            text = text[:-1] + "".join(f"; {f}" for f in _figures(example, item_id)) + "."
            return text[0].upper() + text[1:]
        parts = []
        link = self._shared(item_id, example, prefs)
        if link:
            feature, holders = link
            parts.append(f"{feature}, like {self._names(holders, example.domain, 'reason')}")
        transition = read_evidence(example.evidence.get(item_id, "")).next_counts
        if transition and example.context and not parts:  # one link says enough (tokens)
            parts.append(f"follows {self.title(example.context[-1], example.domain)}")
        if not parts:
            what = "tag" if example.domain == "music" else "field"
            shown = f"; {feats[0]}" if feats else ""
            parts.append(f"less obvious pick, no shared {what}{shown}")
        parts += _figures(example, item_id)
        text = "; ".join(parts) + "."
        return text[0].upper() + text[1:]

    def _shared(self, item_id: str, example: Example,
                prefs: list[Preference]) -> tuple[str, list[str]] | None:
        """The feature the item shares with the history that says most: a key preference
        first, then the most distinctive (history items having it x idf)."""
        shared = shared_features(item_id, example.context, self.items, example.domain)
        if not shared:
            return None
        keys = {p.feature.casefold() for p in prefs if p.feature}
        idf = self.idf(example.domain)
        # max keeps the first maximum: the item's own feature order breaks ties
        return max(shared, key=lambda fh: (fh[0].casefold() in keys,
                                           len(fh[1]) * idf.get(fh[0].casefold(), 0.0)))

    def respond(self, example: Example) -> str:
        prefs = self.key_preferences(example)
        ranked = self.rank(example, prefs)
        titles = [self.items[i].title if i in self.items else i for i in ranked]
        reasons = [self.reason(i, example, prefs) for i in ranked]
        return format_recommendation([p.phrase for p in prefs], titles, reasons, example.domain)


def _figures(example: Example, item_id: str) -> list[str]:
    """The evidence's rank of the item ("SASRec #3"), without its probability: a supporting
    figure, read from the text the evidence wrote (none in names-only mode)."""
    rank = read_evidence(example.evidence.get(item_id, "")).rank_text()
    return [rank] if rank else []


class LLMTeacher(Teacher):
    """An LLM given the recommender prompt (the paper: Claude 3 Sonnet on Bedrock)."""

    def __init__(self, client: LLMClient, items: dict[str, Item], top_k: int,
                 temperature: float = 0.0, max_new_tokens: int = 512, seed: int = 0):
        self.client, self.items, self.top_k = client, items, top_k
        self.temperature, self.max_new_tokens, self.seed = temperature, max_new_tokens, seed

    def respond(self, example: Example) -> str:
        return self.respond_many([example])[0]

    def respond_many(self, examples: list[Example]) -> list[str]:
        if not examples:
            return []
        prompts = [render_recommender(ex, self.items, self.top_k) for ex in examples]
        outs = self.client.generate(prompts, n=1, temperature=self.temperature, top_p=1.0,
                                    max_new_tokens=self.max_new_tokens, seed=self.seed)
        return [o[0] if o else "" for o in outs]


def make_teacher(cfg: TeacherConfig, items: dict[str, Item], top_k: int,
                 client_factory: Callable[[LLMSpec], LLMClient] | None = None,
                 seed: int = 0) -> Teacher:
    if cfg.kind == "offline":
        return OfflineTeacher(items, top_k, seed=seed)
    if cfg.kind == "llm":
        client = (client_factory or make_client)(cfg.llm)
        return LLMTeacher(client, items, top_k, temperature=cfg.temperature, seed=seed)
    raise ConfigError(f"teacher.kind: '{cfg.kind}' is not one of "
                      f"{list(choices(TeacherConfig, 'kind'))}")
