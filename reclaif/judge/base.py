"""What every judge shares: the `Judge` protocol, score scaling, and verdict → preference pair.

A judge compares two raw answer texts for one example and returns a `Verdict` with 0-5 scores per
criterion (the scale of the paper's judge prompt, §4.2) and a choice 'a', 'b' or 'tie'. Only a
decided, position-consistent verdict becomes a DPO pair; ties teach nothing and are dropped.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from reclaif.records import Example, PreferencePair, Scores, Verdict

SCORE_MAX = 5.0


@runtime_checkable
class Judge(Protocol):
    def compare(self, example: Example, a: str, b: str) -> Verdict:
        """One verdict on answers `a` and `b` (raw texts) of `example`."""
        ...

    def compare_many(self, examples: list[Example],
                     pairs: list[tuple[str, str]]) -> list[Verdict]:
        """One verdict per (example, (a, b)), in order; LLM judges batch their calls."""
        ...


def to_scale(x: float) -> float:
    """A [0, 1] quality → the judge's 0-5 score (clamped, 3 decimals so JSON stays readable)."""
    return round(SCORE_MAX * min(1.0, max(0.0, float(x))), 3)


def zero_scores() -> Scores:
    return Scores(relevance=0.0, diversity=0.0, explainability=0.0)


def tie_verdict(raw_text: str, consistent: bool = True,
                scores_a: Scores | None = None, scores_b: Scores | None = None) -> Verdict:
    return Verdict(scores_a=scores_a or zero_scores(), scores_b=scores_b or zero_scores(),
                   choice="tie", raw_text=raw_text, consistent=consistent)


def check_pairs(examples: list[Example], pairs: list[tuple[str, str]]) -> None:
    if len(examples) != len(pairs):
        raise ValueError(f"compare_many: {len(examples)} examples but {len(pairs)} pairs")


def preference_pair(example: Example, prompt: str, a: str, b: str,
                    verdict: Verdict) -> PreferencePair | None:
    """The DPO record of a verdict: chosen/rejected by its choice; None on a tie or when the
    position-swapped judgement disagreed (`consistent` False)."""
    if not verdict.consistent or verdict.choice not in ("a", "b"):
        return None
    chosen, rejected = (a, b) if verdict.choice == "a" else (b, a)
    if chosen == rejected:
        return None  # identical texts give DPO a zero gradient; not a preference
    return PreferencePair(example_id=example.id, prompt=prompt, chosen=chosen, rejected=rejected,
                          verdict=verdict.to_json())
