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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reclaif.atomic import atomic_write_json
from reclaif.baselines.base import order_by_scores
from reclaif.data.features import item_features
from reclaif.errors import ConfigError, DataError
from reclaif.baselines.transition import TransitionRanker
from reclaif.records import Example, Item

SEQUENTIAL_SOURCES = ("sasrec", "transition", "tags")
RETRIEVAL_SOURCES = ("bm25",)
LEARNED_SOURCES = ("sasrec", "transition")  # fitted on interactions: out of fold for training
# What the transition line calls the last item and the people behind a count, per domain.
_NOUNS = {"music": ("artist", "listeners"), "beauty": ("product", "buyers"),
          "product_search": ("product", "shoppers")}
MAX_TAGS = 2  # each tag costs ~3 prompt tokens on each of 20 candidate lines


def resolve_sources(sources: Sequence[str], task: str) -> list[str]:
    """The configured sources, or the task's default; a source the task cannot use is an error."""
    allowed = SEQUENTIAL_SOURCES if task == "sequential" else RETRIEVAL_SOURCES
    chosen = list(sources) or list(allowed)
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

    # -- fitting --------------------------------------------------------------------------
    @classmethod
    def fit(cls, windows: Sequence[Example], items: dict[str, Item], sources: Sequence[str],
            order: str = "score", sasrec_epochs: int = 10, sasrec_seconds: float = 0.0,
            seed: int = 0) -> "EvidenceModels":
        m = cls(sources=list(sources), order=order,
                users=sorted({w.user or w.id for w in windows}))
        if "sasrec" in sources:
            from reclaif.baselines.sasrec import SASRecConfig, SASRecRanker

            m.sasrec = SASRecRanker(SASRecConfig(loss="ce", max_epochs=sasrec_epochs,
                                                 max_seconds=sasrec_seconds, seed=seed),
                                    name="sasrec-ce")
            m.sasrec.fit(windows, items)
        if "transition" in sources:
            m.transition = TransitionRanker(seed=seed)
            m.transition.fit(windows, items)
        m._fit_unlearned(items, seed)
        return m

    def _fit_unlearned(self, items: dict[str, Item], seed: int) -> None:
        if "bm25" in self.sources:
            from reclaif.baselines.bm25 import BM25Ranker

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
            from reclaif.baselines.sasrec import SASRecRanker

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
                parts[cands[i]].append(f"SASRec #{rank} ({p[i]:.2f})")
        if self.bm25 is not None:
            s = self.bm25.scores(example)
            for rank, i in enumerate(np.argsort(-s, kind="stable"), 1):
                parts[cands[i]].append(f"BM25 #{rank} ({s[i]:.1f})")
        if self.transition is not None and example.context:
            noun, people = _NOUNS.get(example.domain, _NOUNS["beauty"])
            last = example.context[-1]
            for c in cands:
                n = self.transition.count(last, c)
                if n:
                    parts[c].append(f"follows your last {noun} for {n} {people}")
        if "tags" in self.sources and example.domain == "music":
            for c in cands:
                tags = item_features(items.get(c), "music")[:MAX_TAGS]
                if tags:
                    parts[c].append("tags: " + ", ".join(tags))
        if self.order == "score" and ranked is not None:
            cands = order_by_scores(example, ranked[1])
        return dataclasses.replace(example, candidates=cands,
                                   evidence={c: "; ".join(parts[c]) for c in cands if parts[c]})

    def describe(self) -> str:
        """One sentence for reports: what the evidence is."""
        what = {"sasrec": "SASRec (full-softmax CE) rank and probability among the candidates",
                "transition": "how many training users went to it straight from the last item",
                "tags": "its top HetRec tags", "bm25": "BM25 rank and score for the query"}
        return ("Evidence per candidate: " + "; ".join(what[s] for s in self.sources)
                + (". Candidates listed best first by " + self.sources[0] if self.order == "score"
                   else ". Candidates in the data's order") + ".")


FIRST_SOURCES = ("SASRec", "BM25")  # the ranking sources annotate() writes "NAME #rank" for


def evidence_first(evidence: dict[str, str]) -> str | None:
    """The candidate the evidence's first ranking source ranks #1, read back from the texts
    `annotate` wrote (so a finished run's evidence/eval.jsonl answers it with no model);
    None in names-only mode."""
    for source in FIRST_SOURCES:
        for cand, text in evidence.items():
            if text.startswith(f"{source} #1 (") or f"; {source} #1 (" in text:
                return cand
    return None
