"""The paper's prompts (§4.1 recommender, §4.2 judge) and an explainability scorer, per domain.

Templates are the `<role>_<domain>.txt` files beside this module (roles: recommender, judge,
explainability; domains: music, beauty, product_search). A template names its slots `{{slot}}`.

Delimiting scheme: every piece of text that comes from data (titles, tags, queries, histories,
the answers being judged) sits inside a fence of its own

    <<<DATA name
    ...
    DATA>>>

and the template says that fenced text is data, never instructions. `sanitize` makes data unable
to leave its fence or pose as the template's structure: runs of three or more `<` or `>` become
`‹`/`›` (so no `<<<DATA` or `DATA>>>` can appear inside), control characters go, and a data line
that begins like one of the templates' section headers (`Task:`, `Chosen Option:`, `Score:` ...)
is quoted with `> ` and loses its heading markup. Slots are filled in one regex pass over the
template only, so braces or `{{slot}}` in data are never interpreted.
"""
from __future__ import annotations

import re
import unicodedata
from functools import cache
from importlib.resources import files

from reclaif.data.features import (KEY_FEATURES, descriptive_idf, display_title,
                                   key_feature_phrase, key_features)
from reclaif.errors import DataError
from reclaif.records import Example, Item

ROLES = ("recommender", "judge", "explainability")
DOMAINS = ("music", "beauty", "product_search")

# Fields shown after an item's title, per domain, as the prompts want them (matched on the field
# name casefolded, without a "product_" prefix, "_" read as " "). Music follows the paper's
# prompt: artist names only.
DISPLAY_FIELDS: dict[str, tuple[str, ...]] = {
    "music": (),
    "beauty": ("brand", "item form", "scent"),
    "product_search": ("brand", "color"),
}
MAX_FIELD_CHARS = 60
# A title longer than this is cut in the prompt (a 100 kB title once made a 104 kB prompt);
# the parser matches answers on the first 160 characters anyway (parsing.MAX_FUZZY_CHARS).
MAX_TITLE_CHARS = 200

# Section headers of the templates' own structure. Answer-format headers ("Key Preferences:",
# "Recommended ...:", "Preference 1:") are not here: the answers under review legitimately
# contain them, and they grant no authority.
STRUCTURE_HEADERS = (
    "listening history", "purchase history", "search query", "available artists/bands",
    "available products", "available candidates", "option a", "option b", "option a evaluation",
    "option b evaluation", "next preferred artist/band", "next purchased product",
    "exact products", "answer", "criteria for evaluation", "task", "output format", "decision",
    "chosen option", "rejected option", "reasoning", "relevance score", "diversity score",
    "explainability score", "score", "relevance", "diversity", "explainability", "clarity",
    "alignment", "system", "user", "assistant", "instruction", "instructions",
)
_HEADER_RE = re.compile(
    r"^[\s#*_>\-•]*(" + "|".join(re.escape(h) for h in sorted(STRUCTURE_HEADERS, key=len,
                                                             reverse=True)) + r")\s*[*_]*\s*:",
    re.IGNORECASE)
_FENCE_RUN_RE = re.compile(r"<{3,}|>{3,}")
_INERT_ANGLES = str.maketrans("<>", "‹›")
_SLOT_RE = re.compile(r"\{\{(\w+)\}\}")
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                 "ten")


def sanitize(text: str, multiline: bool = True) -> str:
    """Makes data text unable to pose as prompt structure (see the module docstring).

    multiline=False also folds all whitespace (newlines included) to single spaces: titles,
    tags and queries are one line each, so a title can never start a line of its own.

    Order matters: invisible characters (Cc, Cf, ...) go first, so `<<\u200b<DATA` cannot
    become a fence once they are gone. A run of three or more angles counts their look-alikes
    (the characters whose NFKC or NFKD form holds `<` or `>`: fullwidth, small, "not" signs;
    tests/test_prompts.py checks this list against unicodedata) and allows whitespace and
    combining marks between them, as a reader would; every angle of such a run becomes `‹`/`›`.
    Headers are matched on the line's NFKC form, so "Ｔａｓｋ:" is quoted like "Task:".
    """
    less, greater = "<\ufe64\uff1c\u226e", ">\ufe65\uff1e\u226f"
    angle, gap = f"[{less}{greater}]", r"[\s\u0300-\u036f\u20d0-\u20ff\ufe20-\ufe2f]*"
    inert = str.maketrans(less + greater, "‹" * len(less) + "›" * len(greater))
    text = str(text).replace("\r\n", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c)[0] != "C")
    text = re.sub(f"{angle}(?:{gap}{angle}){{2,}}", lambda m: m.group(0).translate(inert), text)
    if not multiline:
        text = " ".join(text.split())
    lines = []
    for line in text.split("\n"):
        if _HEADER_RE.match(unicodedata.normalize("NFKC", line)):
            line = "> " + unicodedata.normalize("NFKC", line).lstrip(" \t#*_>")
        lines.append(line.rstrip())
    return "\n".join(lines)


@cache
def load_template(role: str, domain: str) -> str:
    """The text of `<role>_<domain>.txt` (read once per process)."""
    if role not in ROLES or domain not in DOMAINS:
        raise DataError(f"no prompt template for role {role!r} and domain {domain!r} "
                        f"(roles: {', '.join(ROLES)}; domains: {', '.join(DOMAINS)})")
    return files(__package__).joinpath(f"{role}_{domain}.txt").read_text(encoding="utf-8")


def fill(template: str, values: dict[str, str]) -> str:
    """Replaces each `{{slot}}` of `template` by `values[slot]` in one pass.

    Hand-written rather than str.format or string.Template: both treat braces or `$` in the
    template specially, and a single regex pass guarantees inserted data is never re-scanned.
    """
    missing = sorted(set(_SLOT_RE.findall(template)) - set(values))
    if missing:
        raise DataError(f"prompt template slot(s) {', '.join(missing)} have no value")
    return _SLOT_RE.sub(lambda m: values[m.group(1)], template)


def _field(item: Item, name: str) -> str:
    for key, value in item.fields.items():
        k = key.casefold().removeprefix("product_").replace("_", " ").strip()
        if k == name and value and str(value).strip():
            v = " ".join(str(value).split())
            return v if len(v) <= MAX_FIELD_CHARS else v[: MAX_FIELD_CHARS - 1] + "…"
    return ""


def display_item(item_id: str, items: dict[str, Item], domain: str) -> str:
    """One item as a prompt line: its `display_title`, then the domain's display fields in
    parentheses."""
    title = sanitize(display_title(item_id, items, domain), multiline=False)
    if len(title) > MAX_TITLE_CHARS:
        title = title[: MAX_TITLE_CHARS - 1] + "…"
    item = items.get(item_id)
    extra = []
    if item is not None:
        for name in DISPLAY_FIELDS.get(domain, ()):
            value = _field(item, name)
            if value:
                extra.append(f"{name}: {sanitize(value, multiline=False)}")
    return f"{title} ({'; '.join(extra)})" if extra else title


def _item_lines(ids: list[str], items: dict[str, Item], domain: str,
                evidence: dict[str, str] | None = None) -> str:
    """One `- item` line per id; in hybrid mode a candidate's evidence follows in brackets."""
    lines = []
    for i in ids:
        line = f"- {display_item(i, items, domain)}"
        if evidence and evidence.get(i):
            line += f" [{sanitize(evidence[i], multiline=False)}]"
        lines.append(line)
    return "\n".join(lines) or "(none)"


# The sentence hybrid prompts add after the data notice (names-only prompts are unchanged).
EVIDENCE_NOTE = {
    "music": "In brackets, from models fitted on other listeners: its SASRec rank and "
             "probability (no % under 1%); \"N listeners next\": N played it right after your "
             "last artist; tags it shares with history artist X, and its tag match (0-1). "
             "Weigh it; cite it in your reasons.",
    "beauty": "In brackets, from models fitted on other shoppers: its SASRec rank and "
              "probability (no % under 1%); \"N buyers next\": N bought it right after your "
              "last product. Weigh it; cite it in your reasons.",
    "product_search": "In square brackets after a candidate: its BM25 rank and score for the "
                      "query. Weigh it, and cite it in your reasons.",
}


# The line a hybrid prompt adds below the history's items (names-only prompts are unchanged).
HISTORY_FEATURES_LABEL = {"music": "Distinctive tags", "beauty": "Distinctive fields"}


def history_features(example: Example, items: dict[str, Item]) -> str:
    """"Distinctive tags: chillout (Enigma), downtempo (Morcheeba)": in hybrid mode, the
    history's `features.key_features`, each with the history item named beside it, as the
    offline teacher states them as its key preferences: the student reads what it learns to
    state (issue 31). Names-only prompts show names only, as the paper's do. "" for a query,
    or a history without descriptive features."""
    label = HISTORY_FEATURES_LABEL.get(example.domain)
    if not example.evidence or not label or isinstance(example.context, str):
        return ""
    top = key_features(example.context, items, example.domain,
                       descriptive_idf(items, example.domain), KEY_FEATURES)
    return f"{label}: " + ", ".join(sanitize(key_feature_phrase(f, h, items, example.domain),
                                             multiline=False) for f, h in top) if top else ""


def _context_values(example: Example, items: dict[str, Item]) -> dict[str, str]:
    """Slots every role shares: the query or the history, the candidates, the evidence note."""
    if isinstance(example.context, str):
        query, history_ids = example.context, [example.context]
    else:
        query, history_ids = " ".join(example.context), list(example.context)
    note = " " + EVIDENCE_NOTE[example.domain] if example.evidence else ""
    history = _item_lines(history_ids, items, example.domain)
    if features := history_features(example, items):
        history += "\n" + features
    return {"query": sanitize(query, multiline=False),
            "history": history,
            "candidates": _item_lines(example.candidates, items, example.domain,
                                      example.evidence),
            "evidence_note": note}


def _label_text(example: Example, items: dict[str, Item]) -> str:
    """The judge's label: the next item (sequential) or the top-graded, i.e. Exact, products."""
    if not example.labels:
        return "(none)"
    top = max(example.labels.values())
    if top <= 0:
        return "(none)"
    ids = [i for i in example.candidates if example.labels.get(i, 0) == top]
    ids += [i for i, g in example.labels.items() if g == top and i not in ids]
    return _item_lines(ids, items, example.domain)


def top_k_word(k: int) -> str:
    return _NUMBER_WORDS[k] if 0 <= k < len(_NUMBER_WORDS) else str(k)


def render_recommender(example: Example, items: dict[str, Item], top_k: int) -> str:
    """The §4.1 recommender prompt for `example` in its domain, asking for `top_k` items.

    Candidates appear in `example.candidates` order, each a line inside the candidates fence.
    """
    values = _context_values(example, items)
    values.update(top_k=str(top_k), top_k_word=top_k_word(top_k))
    return fill(load_template("recommender", example.domain), values)


def render_judge(example: Example, items: dict[str, Item], answer_a: str, answer_b: str) -> str:
    """The §4.2 pairwise judge prompt: context, candidates, both answers, and the label."""
    values = _context_values(example, items)
    values.update(answer_a=sanitize(answer_a), answer_b=sanitize(answer_b),
                  label=_label_text(example, items))
    return fill(load_template("judge", example.domain), values)


def render_explainability(example: Example, items: dict[str, Item], answer: str) -> str:
    """The explainability scorer prompt (1-100, ends with a parseable "Score: N" line)."""
    values = _context_values(example, items)
    values.update(answer=sanitize(answer))
    return fill(load_template("explainability", example.domain), values)
