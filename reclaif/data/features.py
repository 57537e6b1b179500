"""What an item is, in words a prompt, a teacher and a judge can cite: its descriptive tags
(music) or catalog fields (beauty, product search)."""
from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

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


# A music tag names a key feature or a link only when at least this share of the tagged
# artists carry it (document frequency): HetRec tags are free text, and one tagger's private
# label ("specials to 3mmey", "better than lady gaga") sits in the top-5 tags of a handful of
# artists, where its rarity would make it the most "distinctive" feature of any history that
# has two of them. On the bundled sample's 4,598 tagged artists the rule asks for 10 artists:
# it drops 17 of the proof teacher's 512 key preferences (those two, "artists", "cybercore",
# "mike patton"...). The price: rare real genres under it ("sludge", "delta blues": 8 artists
# each) are not cited either; the same artists' broader tags are. A prolific tagger's label
# on many artists ("4m4zinq") passes: no frequency rule tells it from a genre. Catalog fields
# (beauty, product search) are not free text: every brand or scent counts. Relative, so a
# small test catalogue keeps its tags.
MIN_TAG_SHARE = 0.002


def feature_counts(items: dict[str, Item], domain: str) -> dict[str, int]:
    """Per casefolded feature, how many catalogue items have it (its document frequency)."""
    df: dict[str, int] = {}
    for item in items.values():
        for f in dict.fromkeys(x.casefold() for x in item_features(item, domain)):
            df[f] = df.get(f, 0) + 1
    return df


# The catalogue-wide idf tables, one per (domain, kind), for the catalogue last asked about:
# every prompt, teacher answer, rubric score and evidence line needs them, and one LastFM table
# reads all ~17k artists. Keyed by the catalogue object (held, so its id is never reused) and
# its size; callers must not change a returned table.
_IDF_TABLES: dict[tuple[str, bool], tuple[dict[str, Item], int, dict[str, float]]] = {}


def _idf_table(items: dict[str, Item], domain: str, descriptive: bool) -> dict[str, float]:
    hit = _IDF_TABLES.get((domain, descriptive))
    if hit is None or hit[0] is not items or hit[1] != len(items):
        df = feature_counts(items, domain)
        n, floor = max(1, len(items)), 1
        if descriptive and domain == "music":
            tagged = sum(bool(item_features(item, domain)) for item in items.values())
            floor = max(1, math.ceil(MIN_TAG_SHARE * tagged))
        hit = _IDF_TABLES[(domain, descriptive)] = (
            items, len(items), {f: math.log(n / d) for f, d in df.items() if d >= floor})
    return hit[2]


def feature_idf(items: dict[str, Item], domain: str) -> dict[str, float]:
    """Each feature's inverse catalogue frequency, log(N / df) with features casefolded: the
    weight that keeps "rock" (on a quarter of LastFM's artists) from winning every history.
    Computed once per catalogue (do not change the table)."""
    return _idf_table(items, domain, descriptive=False)


def descriptive_idf(items: dict[str, Item], domain: str) -> dict[str, float]:
    """`feature_idf` of the features that may name a key feature or a link: for music, the
    tags at least MIN_TAG_SHARE of the tagged artists carry (see there); every catalog field.
    A feature missing from it is not descriptive (`distinctive_features`, `candidate_link`).
    Computed once per catalogue (do not change the table)."""
    return _idf_table(items, domain, descriptive=True)


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
    (1 + ln(history items having it)) x idf, sublinear in the count as in tf-idf's usual
    variant: what sets this user apart, not what every user shares. Linear in the count, a
    common tag on most of a history beat a rare one on a few: of the offline teacher's
    key-feature pairs on the proof run's 300 held-out prompts 80 held "pop" and only 168 were
    distinct (tests/teacher_links.py, eval_prompts); sublinear, 24 and 199 (0.663; on its
    256 SFT prompts 0.738 -> 0.848), the price being a first feature that two history items
    (of ten, mostly) have in 130 of the 300 (50 before). Only features in `idf` (so
    `descriptive_idf` keeps junk tags out). Ties go to first appearance, so the answer is
    deterministic."""
    holders: dict[str, list[str]] = {}
    shown: dict[str, str] = {}
    for h in dict.fromkeys(history):
        for f in item_features(items.get(h), domain):
            key = f.casefold()
            if key not in idf:
                continue
            shown.setdefault(key, f)
            if h not in holders.setdefault(key, []):
                holders[key].append(h)
    ranked = sorted(holders, key=lambda f: -(1 + math.log(len(holders[f]))) * idf.get(f, 0.0))
    return [(shown[f], holders[f]) for f in ranked[:k]]


# The offline teacher states two, and a hybrid prompt shows the same two below the history
# (prompts.history_features), so the key features a student learns to state are ones its
# prompt shows. Two: every answer token costs training time, and on the proof run's 256 SFT
# prompts each shown feature costs ~7 prompt tokens (the line: 20.2 on average for two, 27.2
# for three).
KEY_FEATURES = 2
SHORT_TITLE_WORDS = 4  # a product named in a reason or key feature: its first words


def key_features(history: Sequence[str], items: dict[str, Item], domain: str,
                 idf: dict[str, float], k: int = KEY_FEATURES) -> list[tuple[str, list[str]]]:
    """The history's `k` key features, as the offline teacher states them and a hybrid prompt
    shows them: `distinctive_features`, those two or more history items share first (one
    item's rare tag says less about a taste than a shared one). A prefix of a longer list, so
    the teacher's two are the first two the prompt shows."""
    ranked = distinctive_features(history, items, domain, idf, k=10 ** 6)
    return ([fh for fh in ranked if len(fh[1]) >= 2] + [fh for fh in ranked if len(fh[1]) < 2]
            )[:k]


def cited_name(item_id: str, items: dict[str, Item], domain: str) -> str:
    """An item's name as a reason or key feature cites it: a product's first SHORT_TITLE_WORDS
    words (its `display_title` is on its prompt line; every answer token costs training time),
    an artist's whole name."""
    item = items.get(item_id)
    name = item.title if item else item_id
    words = name.split()
    return name if domain == "music" or len(words) <= SHORT_TITLE_WORDS else \
        " ".join(words[:SHORT_TITLE_WORDS]).rstrip(" ,;:-–—&|")


_ARTICLES = {"the", "a", "an"}


def normalize(text: str) -> str:
    """A name as the parser matches it (reclaif.parsing): casefolded, without accents,
    punctuation, symbols, a leading article and extra whitespace."""
    text = unicodedata.normalize("NFKD", text.casefold())
    kept = []
    for c in text:
        cat = unicodedata.category(c)
        if cat == "Mn":
            continue
        kept.append(" " if cat[0] in "PSZC" else c)
    words = "".join(kept).split()
    if len(words) > 1 and words[0] in _ARTICLES:  # "The Horrors" = "Horrors"; inner words stay
        words = words[1:]
    return " ".join(words)


# A product's name on its prompt line and in a recommendation, per domain: its first words,
# more where the catalogue needs them to tell it apart. Beauty's 5-core titles average 24
# words of search keywords ("... Face Masks for Women | Moisturizing Face Mask for Girls |
# ..."): shown whole they made prompts 1,377 tokens on average (100 validation prompts), at 8
# words 911 (-34%), and every answer copies three. The brand, item form, scent and other
# fields stay on the line. Product search keeps whole titles: its reasons match query words
# that a title's tail may hold.
DISPLAY_TITLE_WORDS = {"beauty": 8}
_DISPLAY_TABLES: dict[str, tuple[dict[str, Item], int, dict[str, str]]] = {}


def display_title(item_id: str, items: dict[str, Item], domain: str) -> str:
    """An item's title as prompts show it and answers name it: where DISPLAY_TITLE_WORDS has
    the domain, the shortest prefix of at least that many words that no other catalogue title
    begins with (`normalize`'s reading, the parser's, so it tells any two apart); else whole.
    An id missing from the catalogue shows as itself."""
    item = items.get(item_id)
    if item is None:
        return item_id
    if domain not in DISPLAY_TITLE_WORDS:
        return item.title
    hit = _DISPLAY_TABLES.get(domain)
    if hit is None or hit[0] is not items or hit[1] != len(items):
        hit = _DISPLAY_TABLES[domain] = (items, len(items),
                                         _unique_prefixes(items, DISPLAY_TITLE_WORDS[domain]))
    return hit[2].get(item_id, item.title)


def _unique_prefixes(items: dict[str, Item], words: int) -> dict[str, str]:
    """Each title cut to its first `words` words, or more until no other title's prefix of as
    many words reads the same (a whole shorter title counts as its own prefix)."""
    split = {i: item.title.split() for i, item in items.items()}
    out: dict[str, str] = {}
    pending, n = dict(split), words
    while pending:
        seen: dict[str, int] = {}
        for title in split.values():
            key = normalize(" ".join(title[:n]))
            seen[key] = seen.get(key, 0) + 1
        for i, title in list(pending.items()):
            if len(title) <= n or seen[normalize(" ".join(title[:n]))] == 1:
                # a cut title ends on a word, not a separator ("... POWERGROOMING -")
                out[i] = " ".join(title[:n]).rstrip(" ,;:-–—&|") or " ".join(title[:n])
                del pending[i]
        n += 1
    return out


def key_feature_phrase(feature: str, holders: Sequence[str], items: dict[str, Item],
                       domain: str) -> str:
    """"chillout (Enigma)": a key feature named with the history item that shows it at the
    fewest tokens (the shortest name in UTF-8 bytes, which tracks tokens better than
    characters for CJK names; history order breaks ties)."""
    names = sorted((cited_name(h, items, domain) for h in holders), key=lambda t: len(t.encode()))
    return f"{feature} ({names[0]})" if names else feature


MAX_LINK_FEATURES = 2  # each tag costs ~3 prompt tokens on each of 20 candidate lines


@dataclass(frozen=True)
class Link:
    """What links a candidate to a history by its features: up to MAX_LINK_FEATURES features
    both have, most distinctive first, and the one history item (`holder`, an id) that has
    every one of them."""

    features: tuple[str, ...]
    holder: str


def candidate_link(candidate: str, history: Sequence[str], items: dict[str, Item], domain: str,
                   idf: dict[str, float]) -> Link | None:
    """The one decision of what links `candidate` to `history` (issue 31): the evidence line
    shows it ("tags: a, b with X") and the offline teacher's reason cites it, so a reason never
    names a link the student's prompt does not show. Of the shared features in `idf`
    (`descriptive_idf`), the history item sharing the most (up to MAX_LINK_FEATURES), then the
    most distinctive ones (idf sum), then the latest; its shared features, most distinctive
    first. None when nothing descriptive is shared."""
    shared = [(f, hs) for f, hs in shared_features(candidate, history, items, domain)
              if f.casefold() in idf]
    if not shared:
        return None
    shared.sort(key=lambda fh: -idf[fh[0].casefold()])  # stable: the item's order breaks ties
    latest = {h: n for n, h in enumerate(history)}

    def held(h: str) -> list[str]:
        return [f for f, hs in shared if h in hs][:MAX_LINK_FEATURES]

    holder = max({h for _, hs in shared for h in hs},
                 key=lambda h: (len(held(h)), sum(idf[f.casefold()] for f in held(h)),
                                latest[h]))
    return Link(tuple(held(holder)), holder)
