"""A judge's ranking of N sampled answers (sampling.num_samples > 2): its top answer and the
answers it beat, from pairwise verdicts.

A pairwise judge (llm, panel) compares two answers at a time, the LLM judge in both orders as
for a pair (position disagreements counted as ever): every pair for up to ALL_PAIRS_MAX answers
(6 comparisons at 4), above that a knockout tournament whose winner then meets each answer it
has not met (N - 1 matches plus at most N - 2: 11 comparisons at 8 answers, against all pairs'
28). The rubric judge ranks by its scores instead (RubricJudge.rank_many) and records its
verdict of the top answer against each other one.

The top answer: the most wins less losses over all pairs (the lowest index among equals), or
the tournament's winner (a drawn match sends the lower index on). The group is the top answer
and every answer it beat in a decided, consistent verdict. An answer tied with the top,
inconsistent with it, or ahead of it in a cycle is left out (`tied`): S-DPO pushes each rejected
answer below the chosen one, so only what the judge decided is trained. With two answers this
is preference_pair's rule.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reclaif.records import Example, Verdict

ALL_PAIRS_MAX = 4  # answers judged in every pair; a tournament above


@dataclass
class Comparison:
    """The judge's verdict on answers `a` (shown as A) and `b` (as B) of one group."""

    a: int
    b: int
    verdict: Verdict

    def winner(self) -> int | None:
        """The answer the verdict chose; None on a tie or an inconsistent verdict."""
        v = self.verdict
        if not v.consistent or v.choice not in ("a", "b"):
            return None
        return self.a if v.choice == "a" else self.b

    def to_json(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "verdict": self.verdict.to_json()}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Comparison":
        return cls(int(obj["a"]), int(obj["b"]), Verdict.from_json(obj["verdict"]))


@dataclass
class Ranking:
    """One group's ranking: `top`, the answers it beat (`beaten`, best first) and the rest
    (`tied`), as indices into the sampled answers; `comparisons`, every verdict it rests on."""

    answers: int
    top: int
    beaten: list[int]
    tied: list[int]
    comparisons: list[Comparison]

    def verdict_against(self, j: int) -> Verdict:
        """The verdict of the top answer against answer j (which must have met it)."""
        return next(c.verdict for c in self.comparisons if {c.a, c.b} == {self.top, j})

    def to_json(self) -> dict[str, Any]:
        return {"answers": self.answers, "top": self.top, "beaten": self.beaten,
                "tied": self.tied, "comparisons": [c.to_json() for c in self.comparisons]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Ranking":
        return cls(int(obj["answers"]), int(obj["top"]), [int(i) for i in obj["beaten"]],
                   [int(i) for i in obj["tied"]],
                   [Comparison.from_json(c) for c in obj["comparisons"]])


def _scores(n: int, comparisons: list[Comparison]) -> list[int]:
    """Wins less losses per answer (Copeland's score)."""
    score = [0] * n
    for c in comparisons:
        w = c.winner()
        if w is not None:
            score[w] += 1
            score[c.b if w == c.a else c.a] -= 1
    return score


def ranking_of(n: int, top: int, comparisons: list[Comparison]) -> Ranking:
    """The ranking whose top answer is `top`: the answers it beat, best first by wins less
    losses (among equals in the order they met it: the rubric lists them by its scores), and
    the others it did not beat."""
    beaten = [c.b if c.a == top else c.a for c in comparisons
              if top in (c.a, c.b) and c.winner() == top]
    score = _scores(n, comparisons)
    return Ranking(n, top, sorted(beaten, key=lambda j: -score[j]),
                   [j for j in range(n) if j != top and j not in beaten], comparisons)


Compare = Callable[[list[Example], list[tuple[str, str]]], list[Verdict]]


def rank_pairwise(compare: Compare, examples: list[Example], answers: list[list[str]],
                  on_call: Callable[[list[int]], None] | None = None) -> list[Ranking]:
    """Rankings of each example's answers by pairwise verdicts (module docstring), every
    round of every example in one `compare` call (an LLM judge batches it). `on_call(owners)`
    runs after each call with the example index of each of its comparisons (the LLM judge
    sums its per-record outcomes with it)."""
    if len(examples) != len(answers):
        raise ValueError(f"rank_many: {len(examples)} examples but {len(answers)} answer lists")
    comps: list[list[Comparison]] = [[] for _ in examples]

    def ask(jobs: list[tuple[int, int, int]]) -> list[Comparison]:
        if not jobs:
            return []
        verdicts = compare([examples[k] for k, _, _ in jobs],
                           [(answers[k][i], answers[k][j]) for k, i, j in jobs])
        if on_call is not None:
            on_call([k for k, _, _ in jobs])
        out = [Comparison(i, j, v) for (_, i, j), v in zip(jobs, verdicts)]
        for (k, _, _), c in zip(jobs, out):
            comps[k].append(c)
        return out

    small = [k for k, a in enumerate(answers) if len(a) <= ALL_PAIRS_MAX]
    ask([(k, i, j) for k in small for i in range(len(answers[k]))
         for j in range(i + 1, len(answers[k]))])
    tops: dict[int, int] = {}
    for k in small:
        score = _scores(len(answers[k]), comps[k])
        tops[k] = max(range(len(answers[k])), key=lambda i: (score[i], -i))
    alive = {k: list(range(len(a))) for k, a in enumerate(answers) if len(a) > ALL_PAIRS_MAX}
    while any(len(a) > 1 for a in alive.values()):
        matches = [(k, a[m], a[m + 1]) for k, a in alive.items()
                   for m in range(0, len(a) - 1, 2)]
        results = iter(ask(matches))
        for k, a in alive.items():
            # each match's winner goes on (a draw: the lower index); an odd one out has a bye
            won = [c.b if c.winner() == c.b else c.a
                   for c in (next(results) for _ in range(len(a) // 2))]
            alive[k] = won + a[len(a) // 2 * 2:]
    final = []
    for k, (top,) in alive.items():
        met = {c.a if c.b == top else c.b for c in comps[k] if top in (c.a, c.b)}
        final += [(k, min(top, j), max(top, j)) for j in range(len(answers[k]))
                  if j != top and j not in met]
        tops[k] = top
    ask(final)
    return [ranking_of(len(a), tops[k], comps[k]) for k, a in enumerate(answers)]
