"""Explainability: the offline grounding score and the 1-100 scorer (paper §5, "Expl. Score").

Grounding (offline, data-derived) asks two questions of a parsed answer:
  1. are its key features this user's? A key feature earns full credit when it states a
     feature (tag, catalog field) history items really have, a distinctive one (weighted by its
     inverse catalogue frequency, so "rock" earns less than "drone"), named with a history item
     that has it; one that only shares words with the history's titles earns a quarter. For
     retrieval, a feature is grounded when it shares a content word with the query;
  2. does every recommended item get a reason that is true of it and links it to the user?
     A reason that cites a catalog word the item, its evidence and the history's names lack,
     or an evidence figure (SASRec rank, listener count) other than the item's own, gets none.
     Full credit when it names a feature the item and some history items both have, together
     with one of those history items or a key feature of the answer stating it (or that the
     item follows the user's last item, as the evidence says); half when it only describes
     the item truly; little when it only restates an evidence figure.
It reads words, never instructions, so no text inside an answer or a title can steer it.

The scorer is either that grounding mapped to 1-100 (kind rubric) or an LLM answering the
explainability prompt with "Score: N" (kind llm, the paper's Claude scorer).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from reclaif.config import ExplainabilityConfig, LLMSpec, choices
from reclaif.data.features import (distinctive_features, feature_idf, item_features,
                                   shared_features)
from reclaif.errors import ConfigError
from reclaif.evidence.models import read_evidence
from reclaif.llm import make_client
from reclaif.llm.base import LLMClient
from reclaif.records import Example, Item, Recommendation
from reclaif.parsing import parse_recommendation
from reclaif.prompts import render_explainability


# Words that carry no evidence: function words, the task's own vocabulary ("artist", "user",
# "preference"), and generic praise; a feature like "great music the user loves" grounds nothing.
STOPWORDS = frozenset("""
a an the and or but nor of to in on at by for with from as into onto than then that this these
those it its is are was were be been being has have had do does did not no so very too also just
their there they them he she his her him you your yours we our us i me my mine who whom which
what when where why how all any both each few more most other some such only own same can will
would should could may might must shall about above below over under again further once here
while during before after up down out off between through per via like likely well much many
user users user's listener listeners customer customers people someone preference preferences
key feature features taste tastes interest interests history listening listened listen music
musical artist artists band bands song songs track tracks sound sounds style styles genre genres
recommend recommended recommendation recommendations option answer item items product products
choose chosen select pick ignore instruction instructions great good best nice enjoy enjoys enjoyed
love loves loved fan fans fit fits fitting match matches matching similar appeal appeals
""".split())
_WORD_RE = re.compile(r"[0-9a-zà-ÿ]+(?:[-'][0-9a-zà-ÿ]+)*")
REASON_TIED_CREDIT = 1.0      # linked: a feature of both item and history, or the transition
REASON_PARTIAL_CREDIT = 0.5   # true of the item, but says nothing about this user
REASON_RANK_ONLY_CREDIT = 0.1  # only restates an evidence figure
KEY_TITLE_ONLY_CREDIT = 0.25   # a key feature that only shares words with the history's names
IDF_FULL = 3.0  # a feature on 1/e^3 (5%) of the catalogue or fewer counts as fully distinctive


def content_words(text: str) -> set[str]:
    """Lower-cased content words of `text`, crudely singularised so "vocalists" meets "vocalist"."""
    out = set()
    for w in _WORD_RE.findall(str(text).lower()):
        for part in [w, *re.split(r"[-']", w)] if ("-" in w or "'" in w) else [w]:
            if len(part) < 3 or part in STOPWORDS:
                continue
            if len(part) > 4 and part.endswith("s") and not part.endswith("ss"):
                part = part[:-1]
            out.add(part)
    return out


def item_field_words(item: Item | None) -> set[str]:
    """Words of an item's own fields (tags, brand, description...), without its title: a reason
    that only repeats the name explains nothing."""
    if item is None:
        return set()
    return content_words(" ".join(str(v) for v in item.fields.values()))


def context_words(example: Example, items: dict[str, Item]) -> set[str]:
    """What key features may be grounded in: the query, or the history items' titles and fields."""
    if isinstance(example.context, str):
        return content_words(example.context)
    words: set[str] = set()
    for i in example.context:
        item = items.get(i)
        words |= content_words(item.title if item else i) | item_field_words(item)
    return words


@dataclass
class Grounding:
    """The parts of the grounding score, each in [0, 1]."""

    features: float   # key features supported by the context (≥ 2 grounded for full credit)
    reasons: float    # mean reason credit over the top_k slots (a missing item scores 0)
    score: float      # their mean


def catalog_words(items: dict[str, Item]) -> frozenset[str]:
    """Every word some item's fields use: the vocabulary a reason can make claims in."""
    key = id(items)
    if _VOCAB.get("key") != key or _VOCAB.get("n") != len(items):
        vocab: set[str] = set()
        for item in items.values():
            vocab |= item_field_words(item)
        _VOCAB.update(key=key, n=len(items), words=frozenset(vocab))
    return _VOCAB["words"]


_VOCAB: dict = {}


def reason_credit(reason: str, item: Item | None, evidence: str, feature_words: set[str],
                  vocab: frozenset[str], link: str | None = None,
                  history_words: set[str] | frozenset[str] = frozenset()) -> float:
    """Credit of one reason, only for what is true of the item: 0 when it cites a catalog word
    that the item's own fields, its evidence and the history's names (`history_words`) lack
    (a tag it does not have) or an evidence figure other than the item's own (a wrong SASRec
    rank or listener count); else 1 when it links item and user (`link`, from `reason_link`),
    0.5 when it only describes the item, 0.1 when it only restates an evidence figure.
    `feature_words` (the answer's key features) is kept for callers; the link decides now."""
    words = content_words(reason)
    own = item_field_words(item) | content_words(evidence)
    title = content_words(item.title) if item is not None else set()
    if (words & vocab) - own - title - set(history_words):
        return 0.0
    claimed = read_evidence(reason).claims
    if claimed - read_evidence(evidence).claims:
        return 0.0
    if link:
        return REASON_TIED_CREDIT
    if words & item_field_words(item):
        return REASON_PARTIAL_CREDIT
    if evidence and claimed:
        return REASON_RANK_ONLY_CREDIT
    return 0.0


def _title(item_id: str, items: dict[str, Item]) -> str:
    item = items.get(item_id)
    return item.title if item else item_id


def _value_words(feature: str) -> set[str]:
    """Words of a feature's value: 'brand: Olaplex' is 'olaplex'."""
    return content_words(feature.split(": ", 1)[-1])


def _names(text: str, title: str, skip: set[str] | frozenset[str] = frozenset()) -> bool:
    """Whether `text` names the item titled `title`: a content word of the title (other than
    `skip`, the feature's own words), or the whole title as words ("BT", "Mú")."""
    return bool((content_words(title) - set(skip)) & content_words(text)) or _says(text, title)


def _says(text: str, phrase: str) -> bool:
    """Whether `text` has `phrase` as whole words, case and spacing aside."""
    t = " ".join(phrase.casefold().split())
    return bool(t) and re.search(rf"(?<!\w){re.escape(t)}(?!\w)", text.casefold()) is not None


def _text_words(item: Item | None, candidate: str) -> set[str]:
    """Retrieval: the words a query can share with an item, its fields' and its title's."""
    return item_field_words(item) | content_words(item.title if item else candidate)


def linkable(candidate: str, example: Example, items: dict[str, Item]) -> bool:
    """Whether some reason could link `candidate` to this user by `reason_link`'s rule: a
    feature it shares with the history, or the evidence's transition from the last item
    (retrieval: a query word its text has). A reason about an item with nothing to cite can
    only be honest about it, so the share of linked reasons is bounded by the picks'."""
    if isinstance(example.context, str):
        return bool(_text_words(items.get(candidate), candidate) & content_words(example.context))
    if any(_value_words(f) for f, _ in shared_features(candidate, example.context, items,
                                                       example.domain)):
        return True
    return bool(example.context) and bool(
        read_evidence(example.evidence.get(candidate, "")).next_counts)


def reason_link(reason: str, candidate: str, example: Example, items: dict[str, Item],
                key_feature_words: set[str] | frozenset[str] = frozenset()) -> str | None:
    """What links `reason`'s item to this user, as a person can check it ("drone: Boris"), or
    None. Sequential: a feature the candidate and some history items both have, all of its
    words in the reason, named with one of those history items or a key feature the answer
    states with it; or "follows LAST" when the reason says it follows the user's last item
    (named) and the evidence says so. Retrieval: query words the item's text really has."""
    words = content_words(reason)
    item = items.get(candidate)
    if isinstance(example.context, str):
        hits = words & content_words(example.context) & _text_words(item, candidate)
        return f"query: {', '.join(sorted(hits))}" if hits else None
    shared = shared_features(candidate, example.context, items, example.domain)
    own_features = item_features(item, example.domain)
    # the most specific reading first: "thrash metal" before "metal" when the reason says both
    for feature, holders in sorted(shared, key=lambda fh: -len(_value_words(fh[0]))):
        fw = _value_words(feature)
        if not fw or not fw <= words:
            continue
        # "Tagged swedish metal." cites the item's own "swedish metal", not the "metal" it
        # shares with the history: a longer feature of the item that the reason says whole
        # is what its words mean.
        if any(fw < _value_words(f) and _says(reason, f.split(": ", 1)[-1])
               for f in own_features):
            continue
        named = [h for h in holders if _names(reason, _title(h, items), fw)]
        if named or fw & set(key_feature_words):
            return f"{feature}: {', '.join(_title(h, items) for h in (named or holders)[:3])}"
    if example.context and "follow" in reason.lower() and \
            read_evidence(example.evidence.get(candidate, "")).next_counts:
        last = _title(example.context[-1], items)
        if _names(reason, last):
            return f"follows {last}"
    return None


def reason_score(reason: str, candidate: str, example: Example, items: dict[str, Item],
                 key_feature_words: set[str] | frozenset[str] = frozenset()) -> float:
    """One reason's credit in this example: `reason_credit` with its `reason_link` and the
    history's names (a reason may name them: "shares drone with Boris")."""
    history_words = set() if isinstance(example.context, str) else set().union(
        *(content_words(_title(h, items)) for h in example.context))
    return reason_credit(reason, items.get(candidate), example.evidence.get(candidate, ""),
                         set(key_feature_words), catalog_words(items),
                         link=reason_link(reason, candidate, example, items, key_feature_words),
                         history_words=history_words)


def key_feature_credit(text: str, example: Example, items: dict[str, Item],
                       history_features: list[tuple[str, list[str]]], ctx: set[str]) -> float:
    """One key feature's credit in [0, 1] (see the module docstring): 0.5 for stating a feature
    history items have, up to 0.25 more by its distinctiveness, 0.25 for naming a history item
    that has it; a quarter for words only the history's names have; none for the rest."""
    kw = content_words(text)
    if isinstance(example.context, str):
        return 1.0 if kw & ctx else 0.0
    idf = feature_idf(items, example.domain)
    matches = [(f, h) for f, h in history_features if _value_words(f) and _value_words(f) <= kw]
    if not matches:
        return KEY_TITLE_ONLY_CREDIT if kw & ctx else 0.0
    feature, holders = max(matches, key=lambda fh: idf.get(fh[0].casefold(), 0.0))
    specific = min(1.0, idf.get(feature.casefold(), 0.0) / IDF_FULL)
    named = any(_names(text, _title(h, items), _value_words(feature)) for h in holders)
    return 0.5 + 0.25 * specific + 0.25 * named


def grounding(rec: Recommendation, example: Example, items: dict[str, Item],
              top_k: int) -> Grounding:
    """The data-derived explainability of a parsed answer (see the module docstring)."""
    ctx = context_words(example, items)
    history_features = [] if isinstance(example.context, str) else distinctive_features(
        example.context, items, example.domain, feature_idf(items, example.domain), k=10 ** 6)
    texts = [f for f in rec.key_features if str(f).strip()]
    credits = sorted((key_feature_credit(f, example, items, history_features, ctx)
                      for f in texts), reverse=True)
    # Half the credit for two good preferences (the prompt asks for 2-3), half for not
    # padding them with unsupported ones.
    feat_score = 0.0 if not credits else \
        0.5 * sum(credits[:2]) / 2 + 0.5 * sum(c > 0 for c in credits) / len(credits)
    feature_words = set().union(*(content_words(f) for f in texts)) if texts else set()
    slots = max(1, min(top_k, len(set(example.candidates)) or top_k))
    credit = sum(reason_score(rec.reasons[n] if n < len(rec.reasons) else "", item_id, example,
                              items, feature_words) for n, item_id in enumerate(rec.items[:slots]))
    reason_part = credit / slots
    return Grounding(features=feat_score, reasons=reason_part,
                     score=0.5 * feat_score + 0.5 * reason_part)


# "Score: 87", "**Score:** 87/100", "Explainability score - 87", "score of 87 out of 100".
_SCORE_RES = [re.compile(p, re.IGNORECASE) for p in (
    r"^[\s>*_#\-]*(?:overall\s+|final\s+|explainability\s+)?score\s*[*_]*\s*[:=\-]\s*[*_\[]*\s*"
    r"(\d+(?:\.\d+)?)",
    r"score\s*(?:is|of|:|=|-)?\s*[*_\[]*\s*(\d+(?:\.\d+)?)\s*(?:/\s*100|out\s+of\s+100)",
    r"(\d+(?:\.\d+)?)\s*(?:/\s*100|out\s+of\s+100)",
)]


def parse_score(text: str) -> float | None:
    """The 1-100 score in an LLM's answer, clamped; None when no score can be found. The last
    "Score:" line wins: the template puts it after the reasoning, which may quote numbers."""
    if not isinstance(text, str):
        return None
    for rx in _SCORE_RES:
        hits = [m for line in text.splitlines() for m in [rx.search(line)] if m]
        if hits:
            return min(100.0, max(1.0, float(hits[-1].group(1))))
    return None


class ExplainabilityScorer:
    """Scores one answer's explainability on 1-100. kind 'rubric': grounding mapped to 1-100
    (an invalid answer scores 1); kind 'llm': the explainability prompt, "Score: N" parsed and
    clamped. An unparseable LLM answer scores 1, like an invalid answer in evaluation, and is
    counted in `n_unparseable` so reports can show how often that happened."""

    def __init__(self, kind: str, items: dict[str, Item], top_k: int,
                 client: LLMClient | None = None, max_new_tokens: int = 256):
        kinds = choices(ExplainabilityConfig, "kind")
        if kind not in kinds:
            raise ConfigError(f"explainability.kind: '{kind}' is not one of {list(kinds)}")
        if kind == "llm" and client is None:
            raise ConfigError("explainability.kind: 'llm' needs a client (explainability.llm)")
        self.kind, self.items, self.top_k = kind, items, top_k
        self.client, self.max_new_tokens = client, max_new_tokens
        self.n_scored = 0
        self.n_unparseable = 0

    def score(self, example: Example, answer: str) -> float:
        return self.score_many([example], [answer])[0]

    def score_many(self, examples: list[Example], answers: list[str]) -> list[float]:
        if len(examples) != len(answers):
            raise ValueError(f"score_many: {len(examples)} examples but {len(answers)} answers")
        if not examples:
            return []
        self.n_scored += len(examples)
        if self.kind == "rubric":
            return [self._rubric(ex, a) for ex, a in zip(examples, answers)]

        prompts = [render_explainability(ex, self.items, a) for ex, a in zip(examples, answers)]
        outs = self.client.generate(prompts, n=1, temperature=0.0, top_p=1.0,
                                    max_new_tokens=self.max_new_tokens, seed=0)
        scores = []
        for out in outs:
            s = parse_score(out[0] if out else "")
            if s is None:
                self.n_unparseable += 1
                s = 1.0
            scores.append(s)
        return scores

    def _rubric(self, example: Example, answer: str) -> float:
        rec = parse_recommendation(answer, example, self.items, self.top_k)
        if not rec.valid:
            return 1.0
        return round(1.0 + 99.0 * grounding(rec, example, self.items, self.top_k).score, 2)


def make_explainability_scorer(cfg: ExplainabilityConfig, items: dict[str, Item], top_k: int,
                               client_factory: Callable[[LLMSpec], LLMClient] | None = None
                               ) -> ExplainabilityScorer:
    """The scorer `cfg` asks for; `client_factory(spec)` builds the LLM (default make_client)."""
    client = None
    if cfg.kind == "llm":
        client = (client_factory or make_client)(cfg.llm)
    return ExplainabilityScorer(cfg.kind, items, top_k, client=client)
