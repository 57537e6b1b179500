"""Any OpenAI-compatible chat endpoint (vLLM server, TGI, llama.cpp server, hosted APIs).

The API key is read from the environment variable the spec names, at request time, and only
ever placed in the Authorization header: never logged, stored or shown in a repr or error.
Retries with exponential backoff and jitter on 429, 5xx and timeouts, honouring Retry-After.
"""
from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from reclaif.config import LLMSpec
from reclaif.errors import ConfigError, LLMError
from reclaif.llm.base import Settled
from reclaif.llm.retry import Backoff, Retryable, parse_retry_after


class OpenAICompatClient:
    """`LLMClient` over POST {base_url}/chat/completions; one request per prompt asks for n."""

    def __init__(self, spec: LLMSpec, backoff: Backoff | None = None):
        if not spec.base_url:
            raise ConfigError("base_url: openai_compat needs an endpoint, e.g. http://host:8000/v1")
        self.spec = spec
        self.url = spec.base_url.rstrip("/") + "/chat/completions"
        self.backoff = backoff or Backoff(max_retries=spec.max_retries, base_s=spec.retry_base_s,
                                          max_s=spec.retry_max_s)

    def __repr__(self) -> str:
        return (f"OpenAICompatClient(url={self.url!r}, model={self.spec.model!r}, "
                f"api_key_env={self.spec.api_key_env!r})")

    def generate(self, prompts: list[str], n: int = 1, temperature: float = 1.0,
                 top_p: float = 1.0, max_new_tokens: int = 256,
                 seed: int = 0) -> list[list[str]]:
        settled = self.generate_settled(prompts, n, temperature, top_p, max_new_tokens, seed)
        for s in settled:
            if s.error is not None:
                raise s.error
        return [s.answers or [] for s in settled]

    def generate_settled(self, prompts: list[str], n: int = 1, temperature: float = 1.0,
                         top_p: float = 1.0, max_new_tokens: int = 256,
                         seed: int = 0) -> list[Settled]:
        """Like `generate`, but a prompt that fails for good is reported in its own `Settled`
        (with the retries it cost) instead of failing the others, which are never re-asked."""
        if not prompts:
            return []
        workers = max(1, min(self.spec.max_concurrency, len(prompts)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(
                lambda ip: self._settle(ip[1], n, temperature, top_p, max_new_tokens,
                                        seed + ip[0]), enumerate(prompts)))

    def _settle(self, prompt: str, n: int, temperature: float, top_p: float,
                max_new_tokens: int, seed: int) -> Settled:
        retries = 0

        def count(_: Retryable) -> None:
            nonlocal retries
            retries += 1

        try:
            return Settled(self.complete(prompt, n, temperature, top_p, max_new_tokens, seed,
                                         on_retry=count), retries=retries)
        except LLMError as e:
            return Settled(None, e, retries)

    def body(self, prompt: str, n: int, temperature: float, top_p: float, max_new_tokens: int,
             seed: int) -> dict[str, Any]:
        return {"model": self.spec.model, "messages": [{"role": "user", "content": prompt}],
                "n": n, "temperature": float(temperature), "top_p": float(top_p),
                "max_tokens": int(max_new_tokens), "seed": int(seed)}

    def complete(self, prompt: str, n: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int,
                 on_retry: Callable[[Retryable], None] | None = None) -> list[str]:
        """n answers to one prompt. Greedy asks once and repeats; a server that returns fewer
        choices than asked (some ignore n) is asked again for the rest."""
        want = 1 if temperature <= 0 else n
        answers: list[str] = []
        while len(answers) < want:
            body = self.body(prompt, want - len(answers), temperature, top_p, max_new_tokens,
                             seed + len(answers))
            got = self.backoff.run(lambda: self._attempt(body), f"{self.url} {self.spec.model}",
                                   self._give_up, on_retry)
            if not got:
                raise LLMError(f"{self.url} (model {self.spec.model}): response has no choices")
            answers.extend(got)
        answers = answers[:want]
        return answers * n if temperature <= 0 else answers

    def _give_up(self, err: Retryable, attempts: int) -> LLMError:
        return LLMError(f"{self.url} (model {self.spec.model}) failed after {attempts} "
                        f"attempts: {err}")

    def _attempt(self, body: dict[str, Any]) -> list[str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.spec.api_key_env, "") if self.spec.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers,
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.spec.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace")
            if e.code == 429 or e.code >= 500:
                raise Retryable(f"HTTP {e.code}: {detail}",
                                parse_retry_after(e.headers.get("Retry-After"))) from None
            raise LLMError(f"{self.url} (model {self.spec.model}): HTTP {e.code}: "
                           f"{detail}") from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
            raise Retryable(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
        try:
            data = json.loads(raw)
            return [c["message"]["content"] or "" for c in data["choices"]]
        except (ValueError, KeyError, TypeError) as e:
            raise LLMError(f"{self.url} (model {self.spec.model}): malformed response "
                           f"({type(e).__name__}: {e}): {raw[:200]!r}") from None
