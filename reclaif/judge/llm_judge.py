"""The LLM judge (paper §4.2): the pairwise prompt, read robustly, asked in both orders.

Position bias is the best-known failure of pairwise LLM judges (a model that prefers whatever
comes first). With `position_swap`, every pair is asked as (A=a, B=b) and (A=b, B=a) in the same
batched call; a verdict is kept only when both orders pick the same answer, otherwise it is a tie
with `consistent` False, and the disagreement rate is counted. An answer that cannot be read is a
tie too (its raw text is kept and counted), never an exception.

A call that still fails after the client's retries (throttling, 5xx, timeouts) costs only its own
record: that verdict is a tie and `last_outcomes[i].failed` says so, so the judge worker writes
the record as failed (skipped and counted) while the rest of the batch is kept.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from reclaif.errors import LLMError
from reclaif.judge.base import CallOutcome, Judge, check_pairs, tie_verdict
from reclaif.llm.base import LLMClient, Settled
from reclaif.records import Example, Item, Scores, Verdict
from reclaif.prompts import render_judge

CRITERIA = ("relevance", "diversity", "explainability")
SWAP_SEPARATOR = "\n\n=== position-swapped call (Option A = answer b) ===\n\n"

# A line that opens one option's evaluation: "**Option A Evaluation:**", "### Option B", "Set A:",
# "Evaluation of Option A", "Option A - Relevance Score: 4 ...".
_OPTION_HEAD_RE = re.compile(r"^[\s>#*_\-\d.)]*(?:evaluation\s+(?:of|for)\s+)?"
                             r"(?:option|set|answer|response)\s*[\[(]?([ab])\b(?![\w'])",
                             re.IGNORECASE)
_DECISION_RE = re.compile(r"^[\s>#*_\-]*(?:final\s+)?(?:decision|verdict|conclusion|"
                          r"chosen\s+option|preferred\s+option)\b", re.IGNORECASE)
_SCORE_RE = {c: re.compile(rf"{c}\w*\s*(?:score)?\s*(?:[\[(]\s*0\s*-\s*5\s*[\])])?\s*[*_]*\s*"
                           rf"(?:[:=\-–]|is)?\s*[*_\[(]*\s*(\d+(?:\.\d+)?)(?!\s*-\s*\d)\s*"
                           rf"(?:/\s*(\d+)|out\s+of\s+(\d+))?", re.IGNORECASE)
             for c in CRITERIA}
# The chosen letter: with "option"/"set" before it anything may follow; a bare letter must end
# its clause, so the article in "the decision is a close one" is never read as option A.
_LETTER = (r"[*_\[(\"']*\s*(?:(?:option|set|answer|response)\s*[*_\[(\"']*([ab])\b"
           r"|([ab])(?=[\s*_\])\"'.,;:!]*(?:$|[-–—(]|because\b|as\b|since\b|for\b|wins\b)))"
           r"(?!\s*(?:or|/)\s*[ab]\b)")
# Ordered by how unambiguous they are; the first pattern that matches decides.
_CHOICE_RES = [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in (
    rf"(?:chosen|preferred|selected|winning|better|best|final)\s+(?:option|set|answer|choice)"
    rf"\s*[*_]*\s*(?:is\s*|[:=\-–]\s*)+{_LETTER}",
    rf"(?:winner|choice|decision|verdict)\s*[*_]*\s*(?:is\s*|[:=\-–]\s*)+{_LETTER}",
    r"\b(?:i\s+)?(?:choose|chose|select|prefer|pick)\s+(?:option|set|answer)\s*([ab])\b",
    r"(?:option|set|answer)\s*([ab])\b[*_]*\s+(?:is|was)\s+(?:the\s+)?(?:chosen|preferred|better|"
    r"stronger|winner|superior|selected)",
)]


def _letter(m: re.Match) -> str:
    return next(g for g in m.groups() if g).lower()


@dataclass
class Judgment:
    """One read of one judge answer: scores of the options as shown, and the option chosen."""

    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # 'a'|'b' → criterion → 0-5
    choice: str | None = None  # 'a' or 'b' (as positioned in that call), None if unreadable

    @property
    def parsed(self) -> bool:
        return self.choice is not None


def _clean(text: str) -> str:
    return text.replace("**", "").replace("__", "").replace("`", "")


def _scores_in(section: str) -> dict[str, float]:
    out = {}
    for c, rx in _SCORE_RE.items():
        m = rx.search(section)
        if m:
            value, denom = float(m.group(1)), float(m.group(2) or m.group(3) or 5)
            out[c] = min(5.0, max(0.0, value * 5.0 / denom if denom > 0 else value))
    return out


def parse_judgment(text: str, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Judgment:
    """Reads per-option scores and the chosen option from a judge answer. Tolerates markdown,
    bold, lower case, "4/5" or "8/10", headers in any of the usual spellings. Without an explicit
    choice, complete and unequal score totals decide; otherwise `choice` stays None."""
    if not isinstance(text, str) or not text.strip():
        return Judgment()
    lines = _clean(text).splitlines()
    decision_at = next((n for n, ln in enumerate(lines) if _DECISION_RE.match(ln)), len(lines))
    sections: dict[str, list[str]] = {}
    current = None
    for ln in lines[:decision_at]:
        m = _OPTION_HEAD_RE.match(ln)
        if m:
            current = m.group(1).lower()
        if current is not None:
            sections.setdefault(current, []).append(ln)
    j = Judgment(scores={k: _scores_in("\n".join(v)) for k, v in sections.items()})
    for region in ("\n".join(lines[decision_at:]), "\n".join(lines)):
        for rx in _CHOICE_RES:
            m = rx.search(region)
            if m:
                j.choice = _letter(m)
                return j
    sa, sb = j.scores.get("a", {}), j.scores.get("b", {})
    if len(sa) == len(sb) == len(CRITERIA):
        ta = sum(w * sa[c] for w, c in zip(weights, CRITERIA))
        tb = sum(w * sb[c] for w, c in zip(weights, CRITERIA))
        if ta != tb:
            j.choice = "a" if ta > tb else "b"
    return j


def _mean_scores(*reads: dict[str, float]) -> Scores:
    vals = {}
    for c in CRITERIA:
        got = [r[c] for r in reads if c in r]
        vals[c] = round(sum(got) / len(got), 3) if got else 0.0
    return Scores(**vals)


class LLMJudge(Judge):
    """The paper's judge over any `LLMClient`; greedy decoding, so a verdict is reproducible."""

    def __init__(self, client: LLMClient, items: dict[str, Item], top_k: int,
                 position_swap: bool = True,
                 weights: tuple[float, float, float] | list[float] = (1.0, 1.0, 1.0),
                 max_new_tokens: int = 512):
        self.client, self.items, self.top_k = client, items, top_k
        self.position_swap = position_swap
        self.weights = tuple(float(w) for w in weights)
        self.max_new_tokens = max_new_tokens
        self.n_verdicts = 0
        self.n_inconsistent = 0   # both orders read, different answers chosen
        self.n_unparseable = 0    # verdicts with at least one unreadable judge answer
        self.n_ties = 0
        self.n_failed = 0         # records whose call failed for good (verdict: a tie)
        self.n_failed_calls = 0
        self.n_retries = 0
        self.last_outcomes: list[CallOutcome] = []  # one per record of the last compare_many

    def compare_many(self, examples: list[Example],
                     pairs: list[tuple[str, str]]) -> list[Verdict]:

        check_pairs(examples, pairs)
        if not examples:
            return []
        prompts = [render_judge(ex, self.items, a, b) for ex, (a, b) in zip(examples, pairs)]
        if self.position_swap:
            prompts += [render_judge(ex, self.items, b, a) for ex, (a, b) in zip(examples, pairs)]
        outs = self.client.generate_settled(prompts, n=1, temperature=0.0, top_p=1.0,
                                            max_new_tokens=self.max_new_tokens, seed=0)
        if len(outs) != len(prompts):
            raise LLMError(f"judge client returned {len(outs)} answer lists for "
                           f"{len(prompts)} prompts")
        n = len(examples)
        verdicts, self.last_outcomes = [], []
        for i in range(n):
            calls = [outs[i]] + ([outs[n + i]] if self.position_swap else [])
            verdict, outcome = self._settled_verdict(calls)
            verdicts.append(verdict)
            self.last_outcomes.append(outcome)
        self.n_verdicts += n
        self.n_ties += sum(v.choice == "tie" for v in verdicts)
        return verdicts

    def _settled_verdict(self, calls: list[Settled]) -> tuple[Verdict, CallOutcome]:
        outcome = CallOutcome(retries=sum(c.retries for c in calls))
        self.n_retries += outcome.retries
        errors = [c.error for c in calls if c.error is not None]
        if errors:
            outcome.failed_calls, outcome.error = len(errors), str(errors[0])
            self.n_failed += 1
            self.n_failed_calls += len(errors)
            return tie_verdict(f"judge call failed: {outcome.error}"), outcome
        texts = [c.answers[0] if c.answers else "" for c in calls]
        before = self.n_unparseable  # _verdict counts an unreadable answer; note if it did
        verdict = self._verdict(texts[0], texts[1] if self.position_swap else None)
        outcome.unparseable = self.n_unparseable > before
        return verdict, outcome

    def _verdict(self, forward: str, swapped: str | None) -> Verdict:
        f = parse_judgment(forward, self.weights)
        raw = forward if swapped is None else forward + SWAP_SEPARATOR + swapped
        if swapped is None:
            if not f.parsed:
                self.n_unparseable += 1
            return Verdict(scores_a=_mean_scores(f.scores.get("a", {})),
                           scores_b=_mean_scores(f.scores.get("b", {})),
                           choice=f.choice or "tie", raw_text=raw, consistent=True)
        s = parse_judgment(swapped, self.weights)
        # In the swapped call Option A shows answer b: map its letters back to the answers.
        s_choice = {"a": "b", "b": "a"}.get(s.choice or "")
        scores_a = _mean_scores(f.scores.get("a", {}), s.scores.get("b", {}))
        scores_b = _mean_scores(f.scores.get("b", {}), s.scores.get("a", {}))
        if not (f.parsed and s.parsed):
            self.n_unparseable += 1
            return Verdict(scores_a, scores_b, "tie", raw, consistent=True)
        if f.choice != s_choice:
            self.n_inconsistent += 1
            return Verdict(scores_a, scores_b, "tie", raw, consistent=False)
        return Verdict(scores_a, scores_b, f.choice, raw, consistent=True)

    def stats(self) -> dict[str, float]:
        n = self.n_verdicts
        return {"verdicts": n, "ties": self.n_ties, "tie_rate": self.n_ties / n if n else 0.0,
                "inconsistent": self.n_inconsistent,
                "disagreement_rate": self.n_inconsistent / n if n else 0.0,
                "unparseable": self.n_unparseable,
                "unparseable_rate": self.n_unparseable / n if n else 0.0,
                "failed": self.n_failed, "failed_calls": self.n_failed_calls,
                "retries": self.n_retries}
