"""The one protocol every LLM backend implements (DESIGN.md): prompts in, n texts each out.

Prompts are user messages; each backend applies its model's chat template itself, so callers
(recommender, teacher, judge, scorer) never know which backend serves them.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class LLMClient(Protocol):
    def generate(self, prompts: list[str], n: int = 1, temperature: float = 1.0,
                 top_p: float = 1.0, max_new_tokens: int = 256,
                 seed: int = 0) -> list[list[str]]:
        """Returns, for each prompt, `n` sampled completions (temperature 0 = greedy)."""
        ...
