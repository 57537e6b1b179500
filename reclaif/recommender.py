"""The LLM recommender (paper §3.1): prompt for an Example → sampled text → Recommendation.

Rendering and parsing are the prompts/parsing layers' (one renderer, one parser); this module
only joins them to a client, so the same Recommender serves the hf, vLLM and remote backends.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

from reclaif.config import LLMSpec
from reclaif.errors import ReclaifError
from reclaif.llm.base import LLMClient
from reclaif.records import Example, Item, Recommendation


class Recommender:
    def __init__(self, client: LLMClient, items: dict[str, Item], top_k: int):
        if top_k < 1:
            raise ReclaifError(f"top_k: {top_k} must be at least 1")
        self.client = client
        self.items = items
        self.top_k = top_k

    def prompts(self, examples: list[Example]) -> list[str]:
        """The recommender prompt of each example (the user message; clients add the template)."""
        from reclaif.prompts import render_recommender

        return [render_recommender(ex, self.items, self.top_k) for ex in examples]

    def parse(self, text: str, example: Example) -> Recommendation:
        from reclaif.parsing import parse_recommendation

        return parse_recommendation(text, example, self.items, self.top_k)

    def recommend(self, examples: list[Example], n: int = 1, temperature: float = 0.0,
                  top_p: float = 1.0, max_new_tokens: int = 256,
                  seed: int = 0) -> list[list[Recommendation]]:
        """`n` parsed recommendations per example, in the examples' order."""
        if not examples:
            return []
        texts = self.client.generate(self.prompts(examples), n=n, temperature=temperature,
                                     top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        if len(texts) != len(examples):
            raise ReclaifError(f"client returned {len(texts)} answer lists for "
                               f"{len(examples)} prompts")
        return [[self.parse(t, ex) for t in outs] for ex, outs in zip(examples, texts)]


def _names(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(";") if s.strip()]


def adhoc_example(args: argparse.Namespace) -> tuple[Example, dict[str, Item]]:
    """An Example and catalog built from names on the command line (ids = names)."""
    candidates = _names(args.candidates)
    if not candidates:
        raise ReclaifError("--candidates: give at least one name, separated by ';'")
    if args.query and args.history:
        raise ReclaifError("give --history (sequential) or --query (retrieval), not both")
    if args.query:
        task, context = "retrieval", args.query.strip()
    else:
        history = _names(args.history)
        if not history:
            raise ReclaifError("give --history 'a; b; c' (sequential) or --query TEXT (retrieval)")
        task, context = "sequential", history
    names = candidates + (context if isinstance(context, list) else [])
    items = {name: Item(id=name, title=name) for name in names}
    ex = Example(id="cli", task=task, context=context, candidates=candidates, labels={},
                 split="cli", domain=args.domain)
    return ex, items


def cmd_recommend(args: argparse.Namespace) -> int:
    """`reclaif recommend`: one recommendation from a model for names given on the command line."""
    from reclaif.llm import make_client

    example, items = adhoc_example(args)
    spec = replace(LLMSpec(), backend=args.backend, model=args.model)
    rec = Recommender(make_client(spec), items, args.top_k)
    result = rec.recommend([example], n=1, temperature=args.temperature,
                           max_new_tokens=args.max_new_tokens, seed=args.seed)[0][0]
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False, indent=2))
    else:
        if result.key_features:
            print("Key features: " + ", ".join(result.key_features))
        for rank, (item, reason) in enumerate(zip(result.items, result.reasons), 1):
            print(f"{rank}. {item}" + (f": {reason}" if reason else ""))
        if not result.valid:
            print("(the answer did not parse as a valid recommendation; raw text follows)")
            print(result.raw_text)
    return 0
