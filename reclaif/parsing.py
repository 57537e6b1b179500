"""LLM answer text → `Recommendation`: key features, ranked candidate ids, a reason each.

The canonical answer text is what `format_recommendation` writes (the §4.1 output format, as the
templates in reclaif/prompts show it); teacher and SFT targets use it, and
`parse_recommendation(format_recommendation(...))` gives back what went in. The parser also
reads the looser text real LLMs write: numbering (`1.`, `1)`, `#1`), bullets, **bold**, quotes,
any of `-  –  —  :` between name and reason, missing headers, and a closing paragraph.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from reclaif.data.features import display_title, normalize
from reclaif.records import Example, Item, Recommendation

# Answer-format headers per domain; the recommender templates show exactly these.
KEY_HEADER = {"music": "Key Preferences", "beauty": "Key Preferences",
              "product_search": "Key Features"}
KEY_ITEM = {"music": "Preference", "beauty": "Preference", "product_search": "Feature"}
LIST_HEADER = {"music": "Recommended Artists/Bands (from most to least likely)",
               "beauty": "Recommended Products (from most to least likely)",
               "product_search": "Ranked Products (from most to least relevant)"}

# A list marker: "1.", "1)", "(1)", "#1", "No. 1", bullets; repeated ("- 1.") is fine.
_MARKER_RE = re.compile(
    r"^(?:\s*(?:[-*•·▪◦‣+>]|\(?#?\d{1,2}[.):]|#\d{1,2}|no\.\s*\d{1,2}[.):]?)\s+)+", re.IGNORECASE)
# "Recommendation 2: X", "Rank #1 - X", "Artist 3. X": a label before the name.
_LABEL_RE = re.compile(r"^(?:recommendation|rank|ranking|pick|choice|artist|band|product|item|"
                       r"result|option)\s*#?\d{1,2}\s*[:.)\-–—]\s*", re.IGNORECASE)
_FEATURE_LABEL_RE = re.compile(r"^(?:key\s+)?(?:preference|feature|need|requirement|attribute)"
                               r"\s*#?\d{1,2}\s*[:.)\-–—]\s*", re.IGNORECASE)
_KEY_HEADER_RE = re.compile(r"(?:key|main|user'?s?|identified|the user's)?\s*(?:preferences?|"
                            r"features?|needs|requirements|attributes|query needs)"
                            r"(?:\s*\([^)]*\))?", re.IGNORECASE)
_LIST_HEADER_RE = re.compile(r"recommend|ranked|ranking|\btop\b|results|picks|selection",
                             re.IGNORECASE)
# Name/reason separators, tried longest name first (titles may contain one themselves).
_SEP_RE = re.compile(r"\s+[-–—]{1,2}\s+|\s*[:|]\s+|\s+\(|\s*[–—]\s*")
_DISPLAY_FIELDS_RE = re.compile(r"\s*\([\w ]{1,20}: [^()]*\)$|\s*\[[^\[\]]*\]$")
# Longest line and name compared: fuzzy matching is quadratic in length, and no list line or
# title needs more (a 5,000-character title once made one answer take over a minute).
MAX_LINE_CHARS = 400
MAX_FUZZY_CHARS = 160
# The template's own placeholder copied instead of filled in: "[Description]".
_PLACEHOLDER_RE = re.compile(r"\[[^\]]*\]")
_QUOTES = "\"'“”‘’`«»"


@dataclass
class _CandidateIndex:
    """The example's candidates by title, id and normalised title, built once per answer."""

    ids: list[str]
    titles: list[str]

    @classmethod
    def build(cls, example: Example, items: dict[str, Item]) -> "_CandidateIndex":
        """Each candidate by the title its prompt line shows (features.display_title) and,
        where that is cut, by its whole title too (an answer may name either)."""
        ids = list(dict.fromkeys(example.candidates))
        shown = {i: display_title(i, items, example.domain) for i in ids}
        pairs = list(shown.items()) + [(i, items[i].title) for i in ids
                                       if i in items and items[i].title != shown[i]]
        return cls([i for i, _ in pairs], [t for _, t in pairs])

    def __post_init__(self) -> None:
        self.exact = {}
        for i, t in zip(self.ids, self.titles):
            self.exact.setdefault(t.strip(), i)
        for i in self.ids:
            self.exact.setdefault(i, i)
        self.norm = {}
        for i, t in zip(self.ids, self.titles):
            self.norm.setdefault(normalize(t), i)
        self.norm.pop("", None)
        self.norm_titles = [(normalize(t)[:MAX_FUZZY_CHARS], i)
                            for i, t in zip(self.ids, self.titles)]

    def exact_or_normalized(self, name: str) -> str | None:
        name = name.strip()
        if name in self.exact:
            return self.exact[name]
        return self.norm.get(normalize(name))

    def fuzzy(self, name: str, threshold: float) -> tuple[float, str | None]:
        key = normalize(name)[:MAX_FUZZY_CHARS]
        if not key:
            return 0.0, None
        best, best_id = 0.0, None
        for title, item_id in self.norm_titles:
            m = difflib.SequenceMatcher(None, key, title, autojunk=False)
            if m.real_quick_ratio() < threshold or m.quick_ratio() < threshold:
                continue
            r = m.ratio()
            if r > best:  # strict: ties keep the earlier candidate
                best, best_id = r, item_id
        return (best, best_id) if best >= threshold else (best, None)

    def match(self, name: str, threshold: float) -> str | None:
        return self.exact_or_normalized(name) or self.fuzzy(name, threshold)[1]


def match_candidate(name: str, example: Example, items: dict[str, Item],
                    threshold: float = 0.85) -> str | None:
    """The candidate id `name` refers to, or None.

    Tries, in order: the exact title (or id), the normalised title (casefold, accents,
    punctuation, articles and whitespace removed), then the closest normalised title by
    difflib ratio if it reaches `threshold` (ties go to the earlier candidate).
    """
    return _CandidateIndex.build(example, items).match(_clean_name(name), threshold)


def _strip_markup(line: str) -> str:
    line = line.replace("**", "").replace("__", "").replace("`", "")
    return line.strip()


def _clean_name(name: str) -> str:
    name = _strip_markup(name).strip(" \t*_")
    if name.startswith("[") and name.endswith("]"):  # the template's "[Artist/Band Name]" copied
        name = name[1:-1]
    name = name.strip(_QUOTES + " ")
    return name.rstrip(" .,;:!-–—").strip(_QUOTES + " ")


def _clean_reason(reason: str) -> str:
    reason = reason.strip()
    if reason.startswith("(") and reason.endswith(")"):
        reason = reason[1:-1]
    return " ".join(reason.strip(" -–—:|").split())


def _splits(body: str) -> list[tuple[str, str]]:
    """(name, reason) readings of a list line, longest name first, the whole line first."""
    out = [(body, "")]
    for m in reversed(list(_SEP_RE.finditer(body))):
        if m.start() > 0:
            sep = m.group(0)
            reason = body[m.end():]
            if "(" in sep:
                reason = reason.rstrip().removesuffix(")")
            out.append((body[: m.start()], reason))
    return out


def _match_line(body: str, index: _CandidateIndex, threshold: float) -> tuple[str, str] | None:
    """The candidate a list line names and its reason; exact/normalised beat fuzzy."""
    readings = _splits(body)
    for name, reason in readings:
        name = _clean_name(name)
        # A name copied with the prompt's "(brand: ...; color: ...)" display fields.
        for variant in (name, _DISPLAY_FIELDS_RE.sub("", name)):
            item = index.exact_or_normalized(variant)
            if item is not None:
                return item, _clean_reason(reason)
    best, best_item, best_reason = 0.0, None, ""
    for name, reason in readings:
        score, item = index.fuzzy(_clean_name(name), threshold)
        if item is not None and score > best:
            best, best_item, best_reason = score, item, reason
    return (best_item, _clean_reason(best_reason)) if best_item is not None else None


def _header(line: str) -> tuple[str, str] | None:
    """('key'|'list', inline rest) when `line` is a section header, else None."""
    core = _strip_markup(line).lstrip("#").strip().strip("*_ ")
    if not core or len(core) > 120:
        return None
    head, colon, rest = core.partition(":")
    head = head.strip().strip("*_ ")
    is_heading = line.lstrip().startswith("#") or (colon and not rest.strip()) or \
        (line.strip().startswith("**") and line.strip().endswith("**"))
    if _KEY_HEADER_RE.fullmatch(head) and (colon or is_heading or head == core):
        return "key", rest.strip()
    if is_heading and _LIST_HEADER_RE.search(head) and not _MARKER_RE.match(core):
        return "list", rest.strip()
    return None


def parse_recommendation(text: str, example: Example, items: dict[str, Item],
                         top_k: int, threshold: float = 0.85) -> Recommendation:
    """Recovers key features, ranked candidate ids and their reasons from an LLM's answer.

    The ranked list is the answer's list lines: lines with a list marker outside the key
    section, and any line under the list header. Each names a candidate (`match_candidate`'s
    rules) or nothing in the set; a name in prose never enters the list. `items` keeps the
    first `top_k` distinct candidates named; `valid` is `is_valid` of every list line. Never
    raises on any text.
    """
    text = text if isinstance(text, str) else ""
    index = _CandidateIndex.build(example, items)
    features: list[str] = []
    entries: list[str | None] = []   # every list line: the candidate it names, or None
    ranked: list[str] = []
    reasons: list[str] = []
    state, blank_after_feature = "start", False
    for raw in text.splitlines():
        line = raw.strip()[:MAX_LINE_CHARS]
        if not line or set(line) <= set("`-=*_#~"):
            blank_after_feature = state == "key" and bool(features)
            continue
        header = _header(line)
        if header is not None:
            state, inline = header
            blank_after_feature = False
            if state == "key" and inline:
                features.extend(f.strip() for f in inline.split(";")
                                if f.strip() and not _PLACEHOLDER_RE.fullmatch(f.strip()))
            continue
        has_marker = bool(_MARKER_RE.match(line))
        body = _LABEL_RE.sub("", _MARKER_RE.sub("", _strip_markup(line)), count=1).strip()
        hit = _match_line(body, index, threshold) if body else None
        if hit is not None and (state != "key" or not _FEATURE_LABEL_RE.match(body)):
            if state == "key":
                state = "list"
            if not has_marker and state != "list":
                continue  # a candidate named in prose: not a list line
            item, reason = hit
            entries.append(item)
            if item not in ranked and len(ranked) < top_k:
                ranked.append(item)
                reasons.append(reason)
            continue
        if state == "key":
            if blank_after_feature and not has_marker:
                state = "after"
                continue
            feature = _FEATURE_LABEL_RE.sub("", _MARKER_RE.sub("", _strip_markup(line)), count=1)
            feature = " ".join(feature.split()).strip()
            if feature and not _PLACEHOLDER_RE.fullmatch(feature):
                features.append(feature)
        elif state == "list" and ranked and not reasons[-1] and raw[:1].isspace():
            # An indented line under a bare name carries that item's reason.
            reasons[-1] = _clean_reason(re.sub(r"^(?:reason|why)\s*:\s*", "", body, flags=re.I))
        elif has_marker and state in ("list", "start", "after") and body:
            entries.append(None)  # a list line naming nothing in the candidate set
    return Recommendation(key_features=features, items=ranked, reasons=reasons,
                          valid=is_valid(entries, example.candidates, top_k), raw_text=text)


def is_valid(entries: Sequence[str | None], candidates: Collection[str], top_k: int) -> bool:
    """THE ValidRatio rule (LLaRA's, which the paper and S-DPO follow), the project's only one,
    for parsed answers and `{"items": [...]}` predictions alike.

    `entries` are the answer's ranked list, one per list line (None: a line that names nothing
    in the candidate set). Valid iff the list holds exactly min(top_k, |candidates|) entries,
    all distinct and all candidates: extra items, repeats and out-of-set names are invalid.
    """
    cands = set(candidates)
    want = min(top_k, len(cands))
    return (want > 0 and len(entries) == want and len(set(entries)) == want
            and all(e is not None and e in cands for e in entries))


def format_recommendation(key_features: list[str], item_titles: list[str], reasons: list[str],
                          domain: str = "music") -> str:
    """The canonical answer text in the §4.1 output format for `domain`.

    Teacher answers and SFT targets use it; parse_recommendation reads it back exactly
    (for single-line features, titles and reasons). Missing reasons are written as none.
    """
    one = lambda s: " ".join(str(s).split())  # noqa: E731 - answers keep one item per line
    lines = [f"**{KEY_HEADER.get(domain, 'Key Preferences')}:**"]
    label = KEY_ITEM.get(domain, "Preference")
    lines += [f"- {label} {n}: {one(f)}" for n, f in enumerate(key_features, 1)]
    lines += ["", f"**{LIST_HEADER.get(domain, LIST_HEADER['music'])}:**"]
    for n, title in enumerate(item_titles, 1):
        reason = one(reasons[n - 1]) if n - 1 < len(reasons) else ""
        lines.append(f"{n}. {one(title)} - {reason}" if reason else f"{n}. {one(title)}")
    return "\n".join(lines) + "\n"
