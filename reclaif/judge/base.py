"""What every judge shares: the `Judge` protocol, score scaling, and verdict → preference pair.

A judge compares two raw answer texts for one example and returns a `Verdict` with 0-5 scores per
criterion (the scale of the paper's judge prompt, §4.2) and a choice 'a', 'b' or 'tie'. Only a
decided, position-consistent verdict becomes a DPO pair; ties teach nothing and are dropped.

Every judge subclasses `Judge` (PEP 544's explicit form), so what only some judges have (`stats`,
per-record `last_outcomes`) has its default here and callers never probe for it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from reclaif.judge.ranking import Ranking, rank_pairwise
from reclaif.records import Example, PreferencePair, Scores, Verdict

SCORE_MAX = 5.0


@dataclass
class CallOutcome:
    """What one record's judge calls cost and how they ended; the run's counts are sums of these,
    written per record, so they survive actor restarts and resumed runs."""

    retries: int = 0          # endpoint retries (429, 5xx, timeouts) spent on this record
    failed_calls: int = 0     # its calls that still failed after their retries
    error: str = ""           # the first such failure
    unparseable: bool = False  # answered, but at least one answer could not be read

    @property
    def failed(self) -> bool:
        return self.failed_calls > 0

    def add(self, other: "CallOutcome") -> None:
        """Counts another call of the same record (a group's comparisons) into this one."""
        self.retries += other.retries
        self.failed_calls += other.failed_calls
        self.error = self.error or other.error
        self.unparseable = self.unparseable or other.unparseable


@runtime_checkable
class Judge(Protocol):
    # One per record of the last compare_many, in order. Empty for judges whose verdicts cost
    # no calls that can fail (rubric, panel): the judge worker then keeps every row as it is.
    last_outcomes: Sequence[CallOutcome] = ()

    def compare(self, example: Example, a: str, b: str) -> Verdict:
        """One verdict on answers `a` and `b` (raw texts) of `example`."""
        return self.compare_many([example], [(a, b)])[0]

    def compare_many(self, examples: list[Example],
                     pairs: list[tuple[str, str]]) -> list[Verdict]:
        """One verdict per (example, (a, b)), in order; LLM judges batch their calls."""
        ...

    def rank_many(self, examples: list[Example], answers: list[list[str]]) -> list[Ranking]:
        """One ranking of each example's answers (sampling.num_samples > 2); by default from
        pairwise verdicts (reclaif.judge.ranking). last_outcomes then holds one outcome per
        example, the sum of its comparisons' (empty where compare_many leaves it empty)."""
        totals = [CallOutcome() for _ in examples]
        seen = []

        def collect(owners: list[int]) -> None:
            for k, outcome in zip(owners, self.last_outcomes):
                totals[k].add(outcome)
                seen.append(k)

        rankings = rank_pairwise(self.compare_many, examples, answers, collect)
        self.last_outcomes = totals if seen else []
        return rankings

    def stats(self) -> dict:
        """Counts over every verdict so far (judge_stats.json); none by default."""
        return {}


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
