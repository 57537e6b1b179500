"""The one protocol every LLM backend implements (docs/ARCHITECTURE.md, "Records and
interfaces"): prompts in, n texts each out.

Prompts are user messages; each backend applies its model's chat template itself, so callers
(recommender, teacher, judge, scorer) never know which backend serves them.

`generate` fails as a whole when one prompt fails for good. Callers that must lose only that
prompt's record (the judge, over a flaky paid endpoint) use `generate_settled`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from reclaif.errors import LLMError


@runtime_checkable
class LLMClient(Protocol):
    def generate(self, prompts: list[str], n: int = 1, temperature: float = 1.0,
                 top_p: float = 1.0, max_new_tokens: int = 256,
                 seed: int = 0) -> list[list[str]]:
        """Returns, for each prompt, `n` sampled completions (temperature 0 = greedy)."""
        ...


@dataclass
class Settled:
    """How one prompt's call ended: its answers, or the error that ended it after retries."""

    answers: list[str] | None
    error: LLMError | None = None
    retries: int = 0  # retried attempts (throttling, 5xx, timeouts); 0 where a client cannot tell


def generate_settled(client: LLMClient, prompts: list[str], n: int = 1,
                     temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256,
                     seed: int = 0) -> list[Settled]:
    """One `Settled` per prompt, so a prompt that fails for good costs only its own record.

    A client with its own `generate_settled` (the HTTP one) answers per prompt and never asks a
    prompt twice. Any other client is asked in one batch (local backends keep their batching);
    only if that batch fails is each prompt asked alone, since the failed batch lost them all.
    """
    native = getattr(client, "generate_settled", None)
    if native is not None:
        return native(prompts, n=n, temperature=temperature, top_p=top_p,
                      max_new_tokens=max_new_tokens, seed=seed)
    kw = dict(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    try:
        return [Settled(o) for o in client.generate(prompts, seed=seed, **kw)]
    except LLMError as e:
        if len(prompts) == 1:
            return [Settled(None, e)]
    out = []
    for i, p in enumerate(prompts):
        try:
            # seed + i: the per-prompt seed the remote clients give prompt i of a batch.
            out.append(Settled(client.generate([p], seed=seed + i, **kw)[0]))
        except LLMError as e:
            out.append(Settled(None, e))
    return out
