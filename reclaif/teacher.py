"""SFT teachers (paper §4.1, "Fine-tuning the Recommender"): who writes the answers SFT distils.

The paper distils Claude 3 Sonnet (`LLMTeacher` over a Bedrock client does exactly that). Without
an endpoint, `OfflineTeacher` writes answers from the data itself: it reads the labels, so its
rankings put the true items first. That is what makes it a teacher rather than a baseline, and
why every report names it as data-derived (TEACHER_DESCRIPTION) rather than as an LLM.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from reclaif.config import LLMSpec, TeacherConfig, choices
from reclaif.errors import ConfigError
from reclaif.llm.base import LLMClient
from reclaif.data.features import item_features
from reclaif.records import Example, Item
from reclaif.parsing import format_recommendation
from reclaif.prompts import render_recommender

TEACHER_DESCRIPTION = (
    "Teacher: the offline teacher, a data-derived stand-in for the paper's Claude 3 Sonnet "
    "teacher, used because no LLM endpoint was configured. It sees the labels. Its key "
    "preferences are the most common tags of the history items (music), the most common brand, "
    "item form, scent and similar fields of the history products (beauty), or the query's terms "
    "(product search); its ranking puts the labelled items first, best grade first, and fills "
    "the rest of the top-k greedily by feature overlap with the key preferences minus overlap "
    "with the items already chosen (relevance and diversity); each item's reason cites the key "
    "preference it matches and the item's own tags or fields. In hybrid mode (evidence in the "
    "prompt) the rest of the top-k follows the evidence's order instead, and each reason cites "
    "the item's own evidence (its SASRec rank, transition count and real tags). Its answers "
    "are templated text in "
    "the canonical answer format, deterministic per seed: SFT on them teaches the format and "
    "label-aware rankings, not an LLM's reasoning."
)

_QUERY_STOP = frozenset("a an the and or of for to in on with without by from at is are my your "
                        "me i you it that this these those be as not no".split())
_WORD_RE = re.compile(r"[0-9a-z]+")
_PROBABILITY_RE = re.compile(r" \(\d\.\d\d\)")


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


class OfflineTeacher(Teacher):
    """Answers in the canonical format, built from labels and item text (see the module doc)."""

    def __init__(self, items: dict[str, Item], top_k: int, seed: int = 0):
        if top_k < 1:
            raise ConfigError(f"top_k: {top_k} must be at least 1")
        self.items, self.top_k, self.seed = items, top_k, seed

    def key_preferences(self, example: Example) -> list[tuple[str, set[str]]]:
        """Up to three (phrase, words) preferences, most supported first."""
        if isinstance(example.context, str):
            terms = [w for w in _WORD_RE.findall(example.context.lower())
                     if w not in _QUERY_STOP and len(w) > 1]
            prefs = [(f"Looking for: {example.context.strip()}", set(terms))]
            prefs += [(f"Key term: {t}", {t}) for t in dict.fromkeys(terms)][:2]
            return prefs
        counts: Counter[str] = Counter()
        for i in example.context:
            counts.update(list(dict.fromkeys(item_features(self.items.get(i), example.domain))))
        # Ties broken by first appearance (Counter keeps insertion order): deterministic.
        # Features two or more history items share; single-item ones only to reach two.
        # Two, stated bare: every answer token costs SFT, sampling and DPO time, and the
        # quickstart's 135M model must learn the whole format within its token budget.
        ranked = [f for f, _ in counts.most_common()]
        top = [f for f in ranked if counts[f] >= 2][:2]
        top += [f for f in ranked if f not in top][:max(0, 2 - len(top))]
        prefs = [(f, _feature_words(f)) for f in top]
        if not prefs:  # no tags or fields at all: the history's own names are all there is
            names = [self.items[i].title if i in self.items else i for i in example.context[-2:]]
            prefs = [(f"Similar to {', '.join(names)}", _words(" ".join(names)))]
        return prefs

    def rank(self, example: Example, prefs: list[tuple[str, set[str]]]) -> list[str]:
        """Labelled items first (best grade, then candidate order), then relevance − redundancy."""
        want = min(self.top_k, len(set(example.candidates)))
        rng = random.Random(f"{self.seed}:{example.id}")
        labelled = sorted((c for c in dict.fromkeys(example.candidates)
                           if example.labels.get(c, 0) > 0),
                          key=lambda c: -example.labels[c])
        chosen = labelled[:want]
        pref_words = set().union(*(w for _, w in prefs)) if prefs else set()
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

    def reason(self, item_id: str, example: Example, prefs: list[tuple[str, set[str]]]) -> str:
        if example.evidence.get(item_id):
            return self._evidence_reason(item_id, example, prefs)
        item = self.items.get(item_id)
        title = item.title if item else item_id
        feats = item_features(item, example.domain)
        if isinstance(example.context, str):  # retrieval: the query's own words are the features
            hits = sorted(_words(example.context) & (_words(title) | self._words(item_id,
                                                                                  example.domain)))
            shown = f"{', '.join(feats[:2])}; " if feats else ""
            text = (f"{shown}matches the query terms {', '.join(hits)}." if hits
                    else f"{shown}a related option for the query.")
            return text[0].upper() + text[1:]
        own = self._words(item_id, example.domain) | _words(title if example.domain != "music"
                                                            else "")
        # A preference the item has verbatim beats one that merely shares a word with it.
        exact = {f.lower() for f in feats}
        matched = [p for p, _ in prefs if p.lower() in exact]
        matched += [p for p, w in prefs if w & own and p not in matched]
        verb = "tagged" if example.domain == "music" else "described as"
        shown = ", ".join(feats[:2])
        if matched:
            return (f"{verb.capitalize()} {shown}; matches {matched[0]}." if shown
                    else f"Matches {matched[0]}.")
        if shown:
            top = prefs[0][0] if prefs else "the history"
            return f"{verb.capitalize()} {shown}; adds variety beyond {top}."
        return "No listed features; included to complete the list."

    def _evidence_reason(self, item_id: str, example: Example,
                         prefs: list[tuple[str, set[str]]]) -> str:
        """Hybrid: the item's own evidence, without the probabilities (the rank says enough and
        costs fewer tokens), then the key preference its own tags or fields carry, if any."""
        parts = [_PROBABILITY_RE.sub("", p).replace("tags: ", "tagged ", 1)
                 for p in example.evidence[item_id].split("; ")]
        own = {f.lower() for f in item_features(self.items.get(item_id), example.domain)}
        matched = [p for p, _ in prefs if p.lower() in own]
        if matched and not any(matched[0].lower() in p.lower() for p in parts):
            parts.append(f"matches {matched[0]}")
        text = "; ".join(parts) + "."
        return text[0].upper() + text[1:]

    def respond(self, example: Example) -> str:
        prefs = self.key_preferences(example)
        ranked = self.rank(example, prefs)
        titles = [self.items[i].title if i in self.items else i for i in ranked]
        reasons = [self.reason(i, example, prefs) for i in ranked]
        return format_recommendation([p for p, _ in prefs], titles, reasons, example.domain)


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
        if client_factory is None:
            from reclaif.llm import make_client as client_factory
        return LLMTeacher(client_factory(cfg.llm), items, top_k, temperature=cfg.temperature,
                          seed=seed)
    raise ConfigError(f"teacher.kind: '{cfg.kind}' is not one of "
                      f"{list(choices(TeacherConfig, 'kind'))}")
