"""What an item is, in words a prompt, a teacher and a judge can cite: its descriptive tags
(music) or catalog fields (beauty, product search)."""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

from reclaif.records import Item

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


def feature_idf(items: dict[str, Item], domain: str) -> dict[str, float]:
    """Each feature's inverse catalogue frequency, log(N / df) with features casefolded: the
    weight that keeps "rock" (on a quarter of LastFM's artists) from winning every history."""
    df: dict[str, int] = {}
    for item in items.values():
        for f in dict.fromkeys(x.casefold() for x in item_features(item, domain)):
            df[f] = df.get(f, 0) + 1
    n = max(1, len(items))
    return {f: math.log(n / d) for f, d in df.items()}


def shared_features(candidate: str, history: Sequence[str], items: dict[str, Item],
                    domain: str) -> list[tuple[str, list[str]]]:
    """What `candidate` shares with the history: (feature, history ids that have it) for each
    of the candidate's own features that at least one history item has, in the candidate's
    order. Only features both sides really have: the link an explanation may cite."""
    own = {f.casefold(): f for f in item_features(items.get(candidate), domain)}
    holders: dict[str, list[str]] = {f: [] for f in own}
    for h in dict.fromkeys(history):
        if h == candidate:
            continue
        for f in dict.fromkeys(x.casefold() for x in item_features(items.get(h), domain)):
            if f in holders:
                holders[f].append(h)
    return [(own[f], ids) for f, ids in holders.items() if ids]


def distinctive_features(history: Sequence[str], items: dict[str, Item], domain: str,
                         idf: dict[str, float], k: int = 2) -> list[tuple[str, list[str]]]:
    """The history's `k` most distinctive features, (feature, history ids that have it), by
    (history items having it) x idf: what sets this user apart, not what every user shares.
    Ties go to first appearance, so the answer is deterministic."""
    holders: dict[str, list[str]] = {}
    shown: dict[str, str] = {}
    for h in dict.fromkeys(history):
        for f in item_features(items.get(h), domain):
            key = f.casefold()
            shown.setdefault(key, f)
            if h not in holders.setdefault(key, []):
                holders[key].append(h)
    ranked = sorted(holders, key=lambda f: -len(holders[f]) * idf.get(f, 0.0))
    return [(shown[f], holders[f]) for f in ranked[:k]]
