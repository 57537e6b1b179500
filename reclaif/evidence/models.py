"""One fitted set of evidence models, and the short text it writes on each candidate line.

`EvidenceModels.fit` trains what the configured sources need (SASRec with full-softmax CE, the
transition model, BM25 over the catalog), `annotate` gives an example its evidence text per
candidate and (order: score) lists its candidates best first by the first ranking source, as a
reranker receives its first stage's list. The texts are short on purpose: every prompt token
costs SFT, sampling and DPO time.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reclaif.atomic import atomic_write_json
from reclaif.baselines.base import order_by_scores
from reclaif.data.features import (MAX_LINK_FEATURES, candidate_link, descriptive_idf,
                                    item_features)
from reclaif.errors import ConfigError, DataError
from reclaif.baselines.tags import TagRanker
from reclaif.baselines.transition import TransitionRanker
from reclaif.records import Example, Item

SEQUENTIAL_SOURCES = ("sasrec", "transition", "tag_overlap", "tags")
RETRIEVAL_SOURCES = ("bm25",)
# [] in the config: these. tag_overlap says more than `tags` in similar space (music only).
DEFAULT_SOURCES = {"sequential": ("sasrec", "transition", "tag_overlap"), "retrieval": ("bm25",)}
LEARNED_SOURCES = ("sasrec", "transition")  # fitted on interactions: out of fold for training
# Who a transition count counts, per domain ("3 listeners next": EVIDENCE_NOTE says the rest).
_PEOPLE = {"music": "listeners", "beauty": "buyers", "product_search": "shoppers"}
MAX_TAGS = MAX_LINK_FEATURES  # tags the `tags` source shows (tag_overlap: candidate_link's)


def sasrec_text(rank: int, probability: float) -> str:
    """"SASRec #3 12%": rank and probability among the candidates, the percent left out under
    0.5% (most of a list; EVIDENCE_NOTE says so): 2-5 prompt tokens fewer per line than
    "SASRec #3 (0.12)"."""
    pct = round(100 * probability)
    return f"SASRec #{rank} {pct}%" if pct >= 1 else f"SASRec #{rank}"


def resolve_sources(sources: Sequence[str], task: str) -> list[str]:
    """The configured sources, or the task's default; a source the task cannot use is an error."""
    allowed = SEQUENTIAL_SOURCES if task == "sequential" else RETRIEVAL_SOURCES
    chosen = list(sources) or list(DEFAULT_SOURCES[task])
    bad = [s for s in chosen if s not in allowed]
    if bad:
        raise ConfigError(f"evidence.sources: {bad} do not apply to {task} examples "
                          f"(use some of {list(allowed)})")
    return chosen


@dataclass
class EvidenceModels:
    sources: list[str]
    order: str = "score"
    users: list[str] = field(default_factory=list)  # whose interactions it was fitted on
    sasrec: object | None = None
    transition: TransitionRanker | None = None
    bm25: object | None = None
    tags: TagRanker | None = None

    # -- fitting --------------------------------------------------------------------------
    @classmethod
    def fit(cls, windows: Sequence[Example], items: dict[str, Item], sources: Sequence[str],
            order: str = "score", sasrec_epochs: int = 10, sasrec_seconds: float = 0.0,
            seed: int = 0, device: str = "cpu") -> "EvidenceModels":
        m = cls(sources=list(sources), order=order,
                users=sorted({w.user or w.id for w in windows}))
        if "sasrec" in sources:
            from reclaif.baselines.sasrec import SASRecConfig, SASRecRanker  # torch: only here

            m.sasrec = SASRecRanker(SASRecConfig(loss="ce", max_epochs=sasrec_epochs,
                                                 max_seconds=sasrec_seconds, seed=seed,
                                                 device=device),
                                    name="sasrec-ce")
            m.sasrec.fit(windows, items)
        if "transition" in sources:
            m.transition = TransitionRanker(seed=seed)
            m.transition.fit(windows, items)
        m._fit_unlearned(items, seed)
        return m

    def _fit_unlearned(self, items: dict[str, Item], seed: int) -> None:
        if "tag_overlap" in self.sources:
            self.tags = TagRanker(seed=seed)
            self.tags.fit([], items)
        if "bm25" in self.sources:
            from reclaif.baselines.bm25 import BM25Ranker  # bm25s and scipy: retrieval only

            self.bm25 = BM25Ranker(seed=seed)
            self.bm25.fit([], items)

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Model files first, fit.json last: a directory with fit.json is complete."""
        directory.mkdir(parents=True, exist_ok=True)
        if self.sasrec is not None:
            self.sasrec.save(directory)
        if self.transition is not None:
            self.transition.save(directory / "transition.json")
        atomic_write_json(directory / "fit.json", {"sources": self.sources, "order": self.order,
                                                   "users": self.users})

    def files(self, directory: Path) -> list[Path]:
        return [p for p in (directory / "sasrec.pt", directory / "sasrec.json",
                            directory / "transition.json", directory / "fit.json") if p.is_file()]

    @classmethod
    def load(cls, directory: Path, items: dict[str, Item], seed: int = 0) -> "EvidenceModels":
        try:
            meta = json.loads((directory / "fit.json").read_text(encoding="utf-8"))
            m = cls(sources=list(meta["sources"]), order=meta["order"], users=meta["users"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{directory / 'fit.json'}: no complete evidence model here ({e})"
                            ) from None
        if "sasrec" in m.sources:
            from reclaif.baselines.sasrec import SASRecRanker  # torch: only here

            m.sasrec = SASRecRanker.load(directory)
        if "transition" in m.sources:
            m.transition = TransitionRanker.load(directory / "transition.json", seed)
        m._fit_unlearned(items, seed)
        return m

    # -- annotation -----------------------------------------------------------------------
    def _ranked(self, example: Example) -> tuple[str, np.ndarray] | None:
        """(source, scores) of the first ranking source: the order candidates are listed in."""
        for name in ("sasrec", "bm25", "transition"):
            ranker = getattr(self, name)
            if name in self.sources and ranker is not None:
                return name, np.asarray(ranker.scores(example), dtype=float)
        return None

    def prepare(self, examples: Sequence[Example]) -> None:
        if self.sasrec is not None and examples:
            self.sasrec.prepare(examples)

    def annotate(self, example: Example, items: dict[str, Item]) -> Example:
        """A copy of `example` with its evidence texts (and, order: score, its candidates
        best first). Reads no label."""
        cands = list(example.candidates)
        parts: dict[str, list[str]] = {c: [] for c in cands}
        ranked = self._ranked(example)
        if self.sasrec is not None and np.isfinite(self.sasrec.scores(example)).any():
            # (candidates outside SASRec's vocabulary score -inf: probability 0, ranked last)
            s = np.asarray(self.sasrec.scores(example), dtype=float)
            p = np.exp(s - s.max())
            p /= p.sum()
            for rank, i in enumerate(np.argsort(-s, kind="stable"), 1):
                parts[cands[i]].append(sasrec_text(rank, float(p[i])))
        if self.bm25 is not None:
            s = self.bm25.scores(example)
            for rank, i in enumerate(np.argsort(-s, kind="stable"), 1):
                parts[cands[i]].append(f"BM25 #{rank} ({s[i]:.1f})")
        if self.transition is not None and example.context:
            people = _PEOPLE.get(example.domain, "buyers")
            last = example.context[-1]
            for c in cands:
                n = self.transition.count(last, c)
                if n:
                    parts[c].append(f"{n} {people} next")
        if self.tags is not None and example.domain == "music" and example.context:
            idf = descriptive_idf(items, "music")
            for c, score in zip(cands, self.tags.scores(example)):
                text = overlap_text(c, example.context, items, idf, score)
                if text:
                    parts[c].append(text)
        if "tags" in self.sources and example.domain == "music":
            for c in cands:
                tags = item_features(items.get(c), "music")[:MAX_TAGS]
                if tags and not any(x.startswith("tags: ") for x in parts[c]):
                    parts[c].append("tags: " + ", ".join(tags))
        if self.order == "score" and ranked is not None:
            cands = order_by_scores(example, ranked[1])
        return dataclasses.replace(example, candidates=cands,
                                   evidence={c: "; ".join(parts[c]) for c in cands if parts[c]})

    def describe(self) -> str:
        """One sentence for reports: what the evidence is."""
        what = {"sasrec": "SASRec (full-softmax CE) rank and probability among the candidates",
                "transition": "how many training users went to it straight from the last item",
                "tags": "its top HetRec tags", "bm25": "BM25 rank and score for the query",
                "tag_overlap": "the tf-idf match of its tags with the history's, the tags it "
                               "shares and the history artist it shares them with"}
        return ("Evidence per candidate: " + "; ".join(what[s] for s in self.sources)
                + (". Candidates listed best first by " + self.sources[0] if self.order == "score"
                   else ". Candidates in the data's order") + ".")


def overlap_text(candidate: str, history: Sequence[str], items: dict[str, Item],
                 idf: dict[str, float], score: float) -> str:
    """The tag_overlap part, "tags: dark, synth-pop with Depeche Mode (0.42)": `candidate_link`
    (the tags it shares with one history artist that has them all, the one decision the
    offline teacher cites too) and the candidate's tf-idf match with the history (TagRanker);
    "" when nothing descriptive is shared (`idf`: `descriptive_idf`). Shown for every candidate
    that has a link, however weak the match: a link the line hides is one the student cannot
    learn to cite (issue 31)."""
    link = candidate_link(candidate, history, items, "music", idf)
    if link is None:
        return ""
    h = link.holder
    name = (items[h].title if h in items else h).replace(";", ",")  # "; " splits the parts
    return f"tags: {', '.join(link.features)} with {name} ({score:.2f})"


FIRST_SOURCES = ("SASRec", "BM25")  # the ranking sources annotate() writes "NAME #rank" for
# The evidence figures, in the compact format and the old one (old run directories keep their
# evidence files): "SASRec #3 12%" / "SASRec #3 (0.12)", "BM25 #1 (4.2)"; "5 listeners next" /
# "follows your last artist for 5 listeners" (buyers, shoppers); "tags: a, b with X (0.42)" /
# "tags: a, b". Case-insensitive, so a model's "sasrec #3" in a reason reads the same.
_RANK_RE = re.compile(r"(?<!\w)(SASRec|BM25)\s*#\s*(\d+)(?![0-9])", re.I)
_NEXT_RE = re.compile(rf"(?<!\w)(\d+)\s+(?:{'|'.join(_PEOPLE.values())})(?!\w)", re.I)
_TAGS_RE = re.compile(r"^tags:\s*(.*?)(?:\s+with\s+.*\(\d+(?:\.\d+)?\))?$", re.I)


@dataclass(frozen=True)
class EvidenceFigures:
    """What an evidence text (or a reason citing it) states: ranks as ("SASRec", 3) in the
    order written, transition counts ("5 listeners next"), the tags it shows."""

    ranks: tuple[tuple[str, int], ...] = ()
    next_counts: tuple[int, ...] = ()
    tags: tuple[str, ...] = ()

    @property
    def claims(self) -> set[tuple[str, int]]:
        """Every figure as a comparable pair: ("SASRec", 3), ("next", 5)."""
        return set(self.ranks) | {("next", n) for n in self.next_counts}

    def rank_text(self) -> str | None:
        """The first rank as written in reasons ("SASRec #3"), or None."""
        return f"{self.ranks[0][0]} #{self.ranks[0][1]}" if self.ranks else None


def read_evidence(text: str) -> EvidenceFigures:
    """The figures of one candidate's evidence text, as `annotate` writes it now or wrote it
    before (see _RANK_RE); the one reader of evidence text, for teacher, judge and report."""
    canon = {s.casefold(): s for s in FIRST_SOURCES}
    tags = [t.strip() for part in text.split("; ") if (m := _TAGS_RE.match(part.strip()))
            for t in m.group(1).split(",") if t.strip()]
    return EvidenceFigures(
        ranks=tuple((canon[m.group(1).casefold()], int(m.group(2)))
                    for m in _RANK_RE.finditer(text)),
        next_counts=tuple(int(m.group(1)) for m in _NEXT_RE.finditer(text)),
        tags=tuple(tags))


def evidence_first(evidence: dict[str, str]) -> str | None:
    """The candidate the evidence's first ranking source ranks #1, read back from the texts
    `annotate` wrote, in either format ("SASRec #1 57%", "SASRec #1 (0.57)"), so a finished
    run's evidence/eval.jsonl answers it with no model; None in names-only mode."""
    read = {cand: read_evidence(text).ranks for cand, text in evidence.items()}
    for source in FIRST_SOURCES:
        for cand, ranks in read.items():
            if (source, 1) in ranks:
                return cand
    return None
