"""The one protocol every LLM backend implements (docs/ARCHITECTURE.md, "Records and
interfaces"): prompts in, n texts each out.

Prompts are user messages; each backend applies its model's chat template itself, so callers
(recommender, teacher, judge, scorer) never know which backend serves them.

`generate` fails as a whole when one prompt fails for good. Callers that must lose only that
prompt's record (the judge, over a flaky paid endpoint) use `generate_settled`.

Every backend subclasses `LLMClient` (PEP 544's explicit form), so the optional abilities
(`generate_settled`, `sample`, `reload`) have their defaults here and callers call them directly.

`sample` is `generate` with what the backend knows of each answer besides its text (a
`Completion`): whether it stopped at `max_new_tokens` rather than at its own end of turn. The
DPO sampler uses it, so a capped answer is never trained as if it had ended.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from reclaif.errors import LLMError, ReclaifError


@runtime_checkable
class LLMClient(Protocol):
    def generate(self, prompts: list[str], n: int = 1, temperature: float = 1.0,
                 top_p: float = 1.0, max_new_tokens: int = 256,
                 seed: int = 0) -> list[list[str]]:
        """Returns, for each prompt, `n` sampled completions (temperature 0 = greedy)."""
        ...

    def generate_settled(self, prompts: list[str], n: int = 1, temperature: float = 1.0,
                         top_p: float = 1.0, max_new_tokens: int = 256,
                         seed: int = 0) -> list[Settled]:
        """One `Settled` per prompt, so a prompt that fails for good costs only its own record.

        This default asks in one batch (local backends keep their batching); only if that batch
        fails is each prompt asked alone, since the failed batch lost them all. A client that
        answers per prompt anyway (the HTTP one) overrides it and never asks a prompt twice.
        """
        kw = dict(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        try:
            return [Settled(o) for o in self.generate(prompts, seed=seed, **kw)]
        except LLMError as e:
            if len(prompts) == 1:
                return [Settled(None, e)]
        out = []
        for i, p in enumerate(prompts):
            try:
                # seed + i: the per-prompt seed the remote clients give prompt i of a batch.
                out.append(Settled(self.generate([p], seed=seed + i, **kw)[0]))
            except LLMError as e:
                out.append(Settled(None, e))
        return out

    def sample(self, prompts: list[str], n: int = 1, temperature: float = 1.0,
               top_p: float = 1.0, max_new_tokens: int = 256,
               seed: int = 0) -> list[list[Completion]]:
        """`generate`'s answers as `Completion`s. This default cannot tell how an answer ended
        (truncated None); backends that can (hf, vllm, openai_compat) override it."""
        return [[Completion(t) for t in texts]
                for texts in self.generate(prompts, n=n, temperature=temperature, top_p=top_p,
                                           max_new_tokens=max_new_tokens, seed=seed)]

    def prompt_tokens(self, prompt: str) -> int | None:
        """How many tokens `prompt` takes in the model's chat template; None where the client
        cannot count them (a remote endpoint counts, and refuses, on its side)."""
        return None

    def context_length(self) -> int | None:
        """The model's longest sequence (prompt + answer) in tokens; None where unknown."""
        return None

    def weights_dtype(self) -> str | None:
        """The dtype a local model computes in ("float32", "bfloat16"...); None where unknown."""
        return None

    def reload(self, model_path: str) -> None:
        """Serves the weights at `model_path` from now on (a sampler actor after a DPO
        iteration). By default refused: a remote endpoint serves what it serves."""
        raise ReclaifError(f"{type(self).__name__}: cannot load new weights ({model_path}); "
                           f"only a local backend (hf) swaps checkpoints in place")


@dataclass
class Completion:
    """One sampled answer. `truncated`: True when it stopped at max_new_tokens without emitting
    its end-of-turn token, False when it ended by itself, None where the backend cannot tell."""

    text: str
    truncated: bool | None = None
    # The answer's token ids (its end-of-turn token included where it emitted one) and their
    # summed log-probs under the model's untempered, unfiltered softmax: what a DPO reference
    # pass on the sampling policy would compute. None where the backend does not give them.
    token_ids: list[int] | None = None
    logp: float | None = None


@dataclass
class Settled:
    """How one prompt's call ended: its answers, or the error that ended it after retries."""

    answers: list[str] | None
    error: LLMError | None = None
    retries: int = 0  # retried attempts (throttling, 5xx, timeouts); 0 where a client cannot tell

