"""`llm:NAME` and `model:PATH` rows: rank through the LLM recommender (zero-shot or trained).

The recommender renders the paper's prompt, generates one answer per example and parses it;
its ranked items become the ranking, and an unparseable answer counts as invalid (ValidRatio)
and as a miss in every relevance metric, as the paper scores LLMs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reclaif.baselines.base import Ranker
from reclaif.config import LLMSpec
from reclaif.errors import ReclaifError
from reclaif.evidence import evidence_of_checkpoint
from reclaif.llm import make_client
from reclaif.recommender import Recommender
from reclaif.records import Example, Item, Recommendation


def parse_method(method: str) -> tuple[str, str]:
    """'llm:NAME' → ('llm', NAME), 'model:PATH' → ('model', PATH). NAME may carry a backend,
    'llm:bedrock:MODEL_ID'; without one the local hf backend loads it."""
    kind, _, target = method.partition(":")
    if kind not in ("llm", "model") or not target:
        raise ReclaifError(f"method '{method}' is not llm:NAME or model:PATH")
    return kind, target


@dataclass
class LLMRanker(Ranker):
    """Ranks with `reclaif.recommender.Recommender`; remembers each example's Recommendation."""

    method: str
    top_k: int = 3
    max_new_tokens: int = 256
    backend: str = "hf"
    name: str = ""
    recommendations: dict[str, Recommendation] = field(default_factory=dict, repr=False)
    _recommender: Any = field(default=None, repr=False)
    _evidence: Any = field(default=None, repr=False)
    _items: dict[str, Item] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        kind, target = parse_method(self.method)
        self.name = self.name or self.method
        self._model = target
        if kind == "llm" and target.count(":") == 1 and target.split(":")[0] in (
                "hf", "vllm", "bedrock", "openai_compat"):
            self.backend, self._model = target.split(":")

    def fit(self, train: Sequence[Example], items: dict[str, Item]) -> None:
        """Builds the client and recommender; zero-shot and trained models learn nothing here."""
        client = make_client(LLMSpec(backend=self.backend, model=self._model))
        self._recommender = Recommender(client, items, self.top_k)
        self._items = items
        # a checkpoint of a hybrid run reads evidence: its run's evaluation model writes it
        self._evidence = (evidence_of_checkpoint(self._model, items)
                          if self.method.startswith("model:") else None)

    def prepare(self, examples: Sequence[Example]) -> None:
        """One batched generate call over all examples (an LLM is slow one prompt at a time)."""
        if self._recommender is None:
            raise ReclaifError(f"{self.name}: call fit(train, items) before rank()")
        todo = [ex for ex in examples if ex.id not in self.recommendations]
        if todo and self._evidence is not None:
            self._evidence.prepare(todo)
            todo = [self._evidence.annotate(ex, self._items) for ex in todo]
        if todo:
            # greedy decoding, one answer per prompt, as at evaluation in the driver
            answers = self._recommender.recommend(todo, n=1, temperature=0.0,
                                                  max_new_tokens=self.max_new_tokens)
            for ex, recs in zip(todo, answers):
                self.recommendations[ex.id] = recs[0]

    def answer(self, example: Example) -> Recommendation:
        return self.recommendations[example.id]

    def rank(self, example: Example) -> list[str]:
        """The recommended items, in the model's order: top-k candidates, not a permutation of
        all of them (an LLM names only k); an invalid answer ranks nothing, so it is a miss."""
        self.prepare([example])
        rec = self.recommendations[example.id]
        if not rec.valid:
            return []
        cands = set(example.candidates)
        seen: list[str] = []
        for i in rec.items:
            if i in cands and i not in seen:
                seen.append(i)
        return seen
