"""The records every layer shares (docs/ARCHITECTURE.md, "Records and interfaces"). They know
no models or files.

JSON round-trips go through `to_json`/`from_json` so every file in a run directory has one shape.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Task = Literal["retrieval", "sequential"]
Domain = Literal["music", "beauty", "product_search"]


@dataclass
class Item:
    """One catalog entry: `title` plus the text fields the prompts use (genre tags, brand...)."""

    id: str
    title: str
    fields: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        """Title plus fields, the text embedded for diversity and matched by BM25."""
        parts = [self.title] + [f"{k}: {v}" for k, v in self.fields.items() if v]
        return ". ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, **self.fields}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Item":
        rest = {k: str(v) for k, v in obj.items() if k not in ("id", "title") and v is not None}
        return cls(id=str(obj["id"]), title=str(obj["title"]), fields=rest)


@dataclass
class Example:
    """One prompt's worth of data: a query or history, the candidates, and graded labels.

    `context` is the query string (retrieval) or the history item ids, oldest first (sequential).
    `labels` maps item id → graded relevance; for next-item tasks the target has 1.
    `evidence` maps a candidate id → the short text collaborative models say of it (hybrid
    mode, reclaif.evidence); empty in the paper's names-only mode.
    """

    id: str
    task: Task
    context: list[str] | str
    candidates: list[str]
    labels: dict[str, float]
    split: str = "train"
    domain: Domain = "music"
    user: str | None = None
    evidence: dict[str, str] = field(default_factory=dict)

    def relevant(self) -> set[str]:
        return {i for i, g in self.labels.items() if g > 0}

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.evidence:  # names-only files stay as they were
            del out["evidence"]
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Example":
        return cls(
            id=str(obj["id"]),
            task=obj["task"],
            context=obj["context"],
            candidates=[str(c) for c in obj["candidates"]],
            labels={str(k): float(v) for k, v in obj["labels"].items()},
            split=obj.get("split", "train"),
            domain=obj.get("domain", "music"),
            user=obj.get("user"),
            evidence={str(k): str(v) for k, v in (obj.get("evidence") or {}).items()},
        )


@dataclass
class Recommendation:
    """What the recommender wrote, parsed: key features, ranked candidate ids, a reason each."""

    key_features: list[str]
    items: list[str]
    reasons: list[str]
    valid: bool
    raw_text: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Recommendation":
        return cls(**{k: obj[k] for k in ("key_features", "items", "reasons", "valid", "raw_text")})


@dataclass
class Scores:
    """A judge's per-criterion scores for one answer (0-5 scale, as in the paper's prompt)."""

    relevance: float
    diversity: float
    explainability: float

    def total(self, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> float:
        return (weights[0] * self.relevance + weights[1] * self.diversity
                + weights[2] * self.explainability)


@dataclass
class Verdict:
    """A judge's comparison of answers a and b. choice: 'a', 'b' or 'tie'.

    `consistent` is False when the position-swapped call disagreed (then choice is 'tie').
    """

    scores_a: Scores
    scores_b: Scores
    choice: Literal["a", "b", "tie"]
    raw_text: str
    consistent: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Verdict":
        return cls(
            scores_a=Scores(**obj["scores_a"]), scores_b=Scores(**obj["scores_b"]),
            choice=obj["choice"], raw_text=obj["raw_text"], consistent=obj.get("consistent", True),
        )


@dataclass
class PreferencePair:
    """One DPO training record: the rendered prompt and the judge's chosen/rejected answers.

    `*_truncated`: the answer stopped at max_new_tokens, so it is trained without an end of
    turn (it never emitted one). `*_ids`, `*_logp`: the answer's token ids as sampled and their
    summed log-probs under the sampling policy `sampled_by` ({"model", "dtype"}), which DPO
    uses as reference log-probs where its reference is that policy. Pairs files written before
    these fields read as not truncated, with nothing sampled."""

    example_id: str
    prompt: str
    chosen: str
    rejected: str
    verdict: dict[str, Any] = field(default_factory=dict)
    chosen_truncated: bool = False
    rejected_truncated: bool = False
    chosen_ids: list[int] | None = None
    rejected_ids: list[int] | None = None
    chosen_logp: float | None = None
    rejected_logp: float | None = None
    sampled_by: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "PreferencePair":
        return cls(example_id=str(obj["example_id"]), prompt=obj["prompt"], chosen=obj["chosen"],
                   rejected=obj["rejected"], verdict=obj.get("verdict", {}),
                   chosen_truncated=bool(obj.get("chosen_truncated", False)),
                   rejected_truncated=bool(obj.get("rejected_truncated", False)),
                   chosen_ids=obj.get("chosen_ids"), rejected_ids=obj.get("rejected_ids"),
                   chosen_logp=obj.get("chosen_logp"), rejected_logp=obj.get("rejected_logp"),
                   sampled_by=obj.get("sampled_by") or {})

    @property
    def capped_over_finished(self) -> bool:
        """A capped chosen answer over a finished rejected one: trained, DPO would push the
        finished answer's stop down and running on to the cap up, so the pairs phase drops it."""
        return self.chosen_truncated and not self.rejected_truncated

    def with_samples(self, row: dict[str, Any]) -> "PreferencePair":
        """This pair with what the sampler said of answers a and b (a verdict row's
        `truncated`, `token_ids`, `logps`, each [a's, b's], and `sampled_by`), moved to
        chosen/rejected by the verdict's choice; a missing or None value stays unknown."""
        swap = self.verdict.get("choice") != "a"

        def sides(key: str) -> tuple[Any, Any]:
            a, b = (list(row.get(key) or []) + [None, None])[:2]
            return (b, a) if swap else (a, b)

        (ct, rt), (ci, ri), (cl, rl) = sides("truncated"), sides("token_ids"), sides("logps")
        return replace(self, chosen_truncated=bool(ct), rejected_truncated=bool(rt),
                       chosen_ids=ci, rejected_ids=ri, chosen_logp=cl, rejected_logp=rl,
                       sampled_by=dict(row.get("sampled_by") or {}))


@dataclass
class AnswerGroup:
    """One S-DPO training record (sampling.num_samples > 2): the rendered prompt, the judge's
    top answer and every answer it beat. Per rejected answer, in `rejected`'s order, what a
    PreferencePair holds of its one: `verdicts` (the judge's comparison of the two, positions as
    the judge saw them), `rejected_truncated`, `rejected_ids`, `rejected_logps` (None: not
    known). `pairs()` reads the group as the pairwise losses train it."""

    example_id: str
    prompt: str
    chosen: str
    rejected: list[str]
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    chosen_truncated: bool = False
    rejected_truncated: list[bool] = field(default_factory=list)
    chosen_ids: list[int] | None = None
    rejected_ids: list[list[int] | None] = field(default_factory=list)
    chosen_logp: float | None = None
    rejected_logps: list[float | None] = field(default_factory=list)
    sampled_by: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Lists the writer left out (or short) read as "not known" for every rejected answer.
        n = len(self.rejected)
        for name, missing in (("verdicts", {}), ("rejected_truncated", False),
                              ("rejected_ids", None), ("rejected_logps", None)):
            values = list(getattr(self, name) or [])
            setattr(self, name, (values + [missing] * n)[:n])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "AnswerGroup":
        return cls(example_id=str(obj["example_id"]), prompt=obj["prompt"], chosen=obj["chosen"],
                   rejected=list(obj["rejected"]), verdicts=obj.get("verdicts") or [],
                   chosen_truncated=bool(obj.get("chosen_truncated", False)),
                   rejected_truncated=[bool(t) for t in obj.get("rejected_truncated") or []],
                   chosen_ids=obj.get("chosen_ids"), rejected_ids=obj.get("rejected_ids") or [],
                   chosen_logp=obj.get("chosen_logp"),
                   rejected_logps=obj.get("rejected_logps") or [],
                   sampled_by=obj.get("sampled_by") or {})

    @classmethod
    def from_pair(cls, p: PreferencePair) -> "AnswerGroup":
        """A pair as a group of two (S-DPO at sampling.num_samples 2 trains pairs.jsonl)."""
        return cls(example_id=p.example_id, prompt=p.prompt, chosen=p.chosen,
                   rejected=[p.rejected], verdicts=[p.verdict],
                   chosen_truncated=p.chosen_truncated, rejected_truncated=[p.rejected_truncated],
                   chosen_ids=p.chosen_ids, rejected_ids=[p.rejected_ids],
                   chosen_logp=p.chosen_logp, rejected_logps=[p.rejected_logp],
                   sampled_by=dict(p.sampled_by))

    def pairs(self) -> list[PreferencePair]:
        """The top answer against each rejected one: how the pairwise losses (sigmoid, ipo,
        hinge) train a group, and what pairs.jsonl holds when the judge ranked groups."""
        return [PreferencePair(example_id=self.example_id, prompt=self.prompt,
                               chosen=self.chosen, rejected=r, verdict=v,
                               chosen_truncated=self.chosen_truncated, rejected_truncated=t,
                               chosen_ids=self.chosen_ids, rejected_ids=ids,
                               chosen_logp=self.chosen_logp, rejected_logp=lp,
                               sampled_by=dict(self.sampled_by))
                for r, v, t, ids, lp in zip(self.rejected, self.verdicts,
                                            self.rejected_truncated, self.rejected_ids,
                                            self.rejected_logps)]
