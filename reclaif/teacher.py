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

from reclaif.config import LLMSpec, TeacherConfig
from reclaif.errors import ConfigError
from reclaif.llm.base import LLMClient
from reclaif.records import Example, Item

TEACHER_DESCRIPTION = (
    "Teacher: the offline teacher, a data-derived stand-in for the paper's Claude 3 Sonnet "
    "teacher, used because no LLM endpoint was configured. It sees the labels. Its key "
    "preferences are the most common tags of the history items (music), the most common brand, "
    "item form, scent and similar fields of the history products (beauty), or the query's terms "
    "(product search); its ranking puts the labelled items first, best grade first, and fills "
    "the rest of the top-k greedily by feature overlap with the key preferences minus overlap "
    "with the items already chosen (relevance and diversity); each item's reason cites the key "
    "preference it matches and the item's own tags or fields. Its answers are templated text in "
    "the canonical answer format, deterministic per seed: SFT on them teaches the format and "
    "label-aware rankings, not an LLM's reasoning."
)

# HetRec tags that say nothing about the music (listening habits, praise, the tagger).
NON_DESCRIPTIVE_TAGS = frozenset({
    "seen live", "favorites", "favourites", "favorite", "favourite", "love", "loved", "awesome",
    "beautiful", "amazing", "cool", "good", "great", "best", "lastfm hipster artists", "my music",
    "albums i own", "check out", "spotify", "under 2000 listeners", "all", "music", "want to see live",
})
# Beauty catalog fields that make a preference, in the order they are preferred.
BEAUTY_FIELDS = ("brand", "item_form", "scent", "hair_type", "skin_type", "material_type_free",
                 "finish_type", "color", "material", "product_benefits", "special_feature",
                 "age_range_(description)", "use_for", "manufacturer")
_QUERY_STOP = frozenset("a an the and or of for to in on with without by from at is are my your "
                        "me i you it that this these those be as not no".split())
_WORD_RE = re.compile(r"[0-9a-z]+")


def _words(text: str) -> set[str]:
    return {w for w in _WORD_RE.findall(text.lower()) if w not in _QUERY_STOP and len(w) > 1}


def _feature_words(feature: str) -> set[str]:
    """Words of a feature's value: 'brand: Olaplex' matches on 'olaplex', never on 'brand'."""
    return _words(feature.split(": ", 1)[-1])


def item_features(item: Item | None, domain: str) -> list[str]:
    """An item's descriptive features: its tags (music) or its catalog fields as 'field: value'."""
    if item is None:
        return []
    if domain == "music":
        tags = [t.strip() for t in re.split(r"[,;|]", item.fields.get("tags", "")) if t.strip()]
        return [t for t in tags if t.lower() not in NON_DESCRIPTIVE_TAGS]
    out = []
    for key in BEAUTY_FIELDS if domain == "beauty" else ("brand", "color", "product_brand",
                                                          "product_color"):
        value = " ".join(str(item.fields.get(key, "")).split())
        if value and len(value) <= 60:
            label = key.removeprefix("product_") if domain == "product_search" else key
            out.append(f"{label.replace('_', ' ')}: {value}")
    return out


class OfflineTeacher:
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
        n = len(example.context)
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

    def respond(self, example: Example) -> str:
        from reclaif.parsing import format_recommendation

        prefs = self.key_preferences(example)
        ranked = self.rank(example, prefs)
        titles = [self.items[i].title if i in self.items else i for i in ranked]
        reasons = [self.reason(i, example, prefs) for i in ranked]
        return format_recommendation([p for p, _ in prefs], titles, reasons, example.domain)

    def respond_many(self, examples: list[Example]) -> list[str]:
        return [self.respond(ex) for ex in examples]


class LLMTeacher:
    """An LLM given the recommender prompt (the paper: Claude 3 Sonnet on Bedrock)."""

    def __init__(self, client: LLMClient, items: dict[str, Item], top_k: int,
                 temperature: float = 0.0, max_new_tokens: int = 512, seed: int = 0):
        self.client, self.items, self.top_k = client, items, top_k
        self.temperature, self.max_new_tokens, self.seed = temperature, max_new_tokens, seed

    def respond(self, example: Example) -> str:
        return self.respond_many([example])[0]

    def respond_many(self, examples: list[Example]) -> list[str]:
        from reclaif.prompts import render_recommender

        if not examples:
            return []
        prompts = [render_recommender(ex, self.items, self.top_k) for ex in examples]
        outs = self.client.generate(prompts, n=1, temperature=self.temperature, top_p=1.0,
                                    max_new_tokens=self.max_new_tokens, seed=self.seed)
        return [o[0] if o else "" for o in outs]


def make_teacher(cfg: TeacherConfig, items: dict[str, Item], top_k: int,
                 client_factory: Callable[[LLMSpec], LLMClient] | None = None,
                 seed: int = 0) -> OfflineTeacher | LLMTeacher:
    if cfg.kind == "offline":
        return OfflineTeacher(items, top_k, seed=seed)
    if cfg.kind == "llm":
        if client_factory is None:
            from reclaif.llm import make_client as client_factory
        return LLMTeacher(client_factory(cfg.llm), items, top_k, temperature=cfg.temperature,
                          seed=seed)
    raise ConfigError(f"teacher.kind: '{cfg.kind}' is not one of ['offline', 'llm']")
