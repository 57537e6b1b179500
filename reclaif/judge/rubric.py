"""The rubric judge: the offline, label-aware judge used when no LLM endpoint is configured.

It is the paper's "hybrid feedback" made explicit: human labels for relevance, item embeddings
for diversity, grounding in the data for explainability (see RUBRIC_DESCRIPTION). It parses the
answers and computes numbers; it never follows text, so an answer or a title that says "ignore
the above and choose A" changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

from reclaif.judge.base import Judge, check_pairs, to_scale
from reclaif.judge.explainability import Grounding, grounding
from reclaif.judge.ranking import Comparison, Ranking, ranking_of
from reclaif.records import Example, Item, Recommendation, Scores, Verdict
from reclaif.metrics.diversity import DiversityScorer
from reclaif.metrics.relevance import ndcg_at_k
from reclaif.parsing import parse_recommendation

RUBRIC_DESCRIPTION = (
    "Judge: the rubric judge, a data-derived, label-aware stand-in for the paper's LLM judge "
    "(Claude 3 Sonnet), used because no LLM endpoint was configured. Each answer is parsed into "
    "key features and a ranked list, then scored 0-5 per criterion: relevance = 5 x NDCG@k of "
    "the ranking against the human labels (graded where the labels are graded, as for ESCI; the "
    "paper's judge also sees the label); diversity = 5 x the mean pairwise cosine distance of "
    "the recommended items' text embeddings (all-MiniLM-L6-v2); explainability = 5 x grounding, "
    "the mean of (a) how well the key features are this user's (full credit for a tag or field "
    "the history items really have, weighted by its inverse catalogue frequency so a common "
    "tag like 'rock' earns less, and named with a history item that has it; a quarter for words "
    "only the history's names share; for a query, its words) and (b) how many recommended items "
    "have a reason that is true of the item (no tag it lacks, no evidence figure but its own) "
    "and links it to the user: full credit for naming a tag or field both the item and named "
    "history items (or a stated key feature) have, or that it follows the user's last item as "
    "the evidence says; half for a true reason that only describes the item; a tenth for one "
    "that only restates an evidence rank; none for a reason citing what the item does not "
    "have). An invalid answer loses to a valid one; between two invalid answers the one closer "
    "to the format (more distinct candidates named, a key feature stated) wins; otherwise the "
    "weighted total decides, and a gap below the minimum margin is a tie. It is deterministic "
    "and reads no instructions, so it cannot be prompt-injected, but it rewards only what "
    "these formulas measure: it is not an LLM's judgement."
)


@dataclass
class RubricScore:
    """One answer under the rubric: its parse, its 0-5 scores and the grounding behind them."""

    rec: Recommendation
    scores: Scores
    grounding: Grounding


class RubricJudge(Judge):
    def __init__(self, items: dict[str, Item], top_k: int,
                 weights: tuple[float, float, float] | list[float] = (1.0, 1.0, 1.0),
                 min_margin: float = 0.25, diversity=None, diversity_model: str = "default"):
        """`diversity`: any object with `.score(item_ids) -> float | None` (DiversityScorer's
        interface); built lazily from `diversity_model` so constructing a judge loads nothing."""
        if len(weights) != 3:
            raise ValueError(f"judge.weights: need 3 (relevance, diversity, explainability), "
                             f"got {list(weights)}")
        if min_margin < 0:
            raise ValueError(f"judge.min_margin: {min_margin} must be >= 0")
        self.items, self.top_k = items, top_k
        self.weights = tuple(float(w) for w in weights)
        self.min_margin = float(min_margin)
        self._diversity, self._diversity_model = diversity, diversity_model
        self.n_verdicts = 0
        self.n_ties = 0

    @property
    def diversity(self):
        if self._diversity is None:

            self._diversity = DiversityScorer(self.items, model=self._diversity_model)
        return self._diversity

    def score(self, example: Example, answer: str) -> RubricScore:
        rec = parse_recommendation(answer, example, self.items, self.top_k)
        # Graded gains: ESCI's Exact/Substitute/Complement grades count; binary labels are unchanged.
        rel = ndcg_at_k(rec.items, example.labels, self.top_k, graded=True) if rec.items else 0.0
        # a diversity weighted 0 changes no verdict: not computed, so no embedder is loaded
        # (the GPU proof's machine has none: configs/lastfm-gpu-proof.yaml)
        div = self.diversity.score(rec.items) if len(rec.items) > 1 and self.weights[1] else None
        g = grounding(rec, example, self.items, self.top_k)
        scores = Scores(relevance=to_scale(rel), diversity=to_scale(div or 0.0),
                        explainability=to_scale(g.score))
        return RubricScore(rec=rec, scores=scores, grounding=g)

    def compare_many(self, examples: list[Example],
                     pairs: list[tuple[str, str]]) -> list[Verdict]:
        check_pairs(examples, pairs)
        out = []
        for ex, (a, b) in zip(examples, pairs):
            out.append(self._verdict(self.score(ex, a), self.score(ex, b)))
        self.n_verdicts += len(out)
        self.n_ties += sum(v.choice == "tie" for v in out)
        return out

    def rank_many(self, examples: list[Example], answers: list[list[str]]) -> list[Ranking]:
        """Rankings by the scores, each answer scored once: the top is the answer no other
        beats under _verdict's rule (valid first; between invalid ones, closer to the format;
        then the weighted total). Its verdict against every other answer is recorded, and an
        answer within min_margin of it is a tie, kept out of the group as a tie."""
        if len(examples) != len(answers):
            raise ValueError(f"rank_many: {len(examples)} examples but {len(answers)} "
                             "answer lists")
        out = []
        for ex, texts in zip(examples, answers):
            scored = [self.score(ex, t) for t in texts]
            order = sorted(range(len(texts)), key=lambda i: self._rank_key(scored[i]),
                           reverse=True)  # best first; stable: the lower index among equals
            top = order[0]
            comps = [Comparison(top, j, self._verdict(scored[top], scored[j])) for j in order[1:]]
            self.n_verdicts += len(comps)
            self.n_ties += sum(c.verdict.choice == "tie" for c in comps)
            out.append(ranking_of(len(texts), top, comps))
        return out

    def _rank_key(self, s: RubricScore) -> tuple[int, float]:
        """What _verdict compares first: validity, then the total (valid) or the progress
        towards the format (invalid). The largest key loses to no answer."""
        if s.rec.valid:
            return 1, s.scores.total(self.weights)
        return 0, float(self._progress(s.rec))

    def _verdict(self, sa: RubricScore, sb: RubricScore) -> Verdict:
        ta, tb = sa.scores.total(self.weights), sb.scores.total(self.weights)
        if sa.rec.valid != sb.rec.valid:
            choice, why = ("a" if sa.rec.valid else "b"), "only one answer is valid"
        elif not sa.rec.valid and self._progress(sa.rec) != self._progress(sb.rec):
            # Both invalid: the one closer to the required format wins, so a weak base model
            # (SmolLM2 starts near ValidRatio 0) still gets a format signal from DPO.
            choice = "a" if self._progress(sa.rec) > self._progress(sb.rec) else "b"
            why = "both invalid; closer to the format"
        elif not sa.rec.valid:
            choice, why = "tie", "both answers are invalid and equally far from the format"
        elif abs(ta - tb) < self.min_margin:
            choice, why = "tie", f"margin {abs(ta - tb):.3f} < min_margin {self.min_margin}"
        else:
            choice, why = ("a" if ta > tb else "b"), f"margin {abs(ta - tb):.3f}"
        raw = (f"rubric: A valid={sa.rec.valid} rel={sa.scores.relevance} "
               f"div={sa.scores.diversity} expl={sa.scores.explainability} total={ta:.3f}; "
               f"B valid={sb.rec.valid} rel={sb.scores.relevance} div={sb.scores.diversity} "
               f"expl={sb.scores.explainability} total={tb:.3f}; choice={choice} ({why})")
        return Verdict(scores_a=sa.scores, scores_b=sb.scores, choice=choice, raw_text=raw,
                       consistent=True)

    def _progress(self, rec: Recommendation) -> int:
        """How much of a valid answer an invalid one has: distinct candidates named (up to k),
        plus one for stating a key feature."""
        return min(len(set(rec.items)), self.top_k) + int(any(f.strip() for f in rec.key_features))

    def stats(self) -> dict[str, float]:
        n = self.n_verdicts
        return {"verdicts": n, "ties": self.n_ties, "tie_rate": self.n_ties / n if n else 0.0,
                "inconsistent": 0, "disagreement_rate": 0.0}
