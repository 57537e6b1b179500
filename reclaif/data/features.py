"""What an item is, in words a prompt, a teacher and a judge can cite: its descriptive tags
(music) or catalog fields (beauty, product search)."""
from __future__ import annotations

import re

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
