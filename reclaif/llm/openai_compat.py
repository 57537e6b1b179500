"""Any OpenAI-compatible chat endpoint (vLLM server, TGI, llama.cpp server, hosted APIs).

The API key is read from the environment variable the spec names, at request time, and only
ever placed in the Authorization header: never logged, stored or shown in a repr or error.
Retries with exponential backoff and jitter on 429, 5xx and timeouts, honouring Retry-After.

The transport is http.client, not urllib: urllib follows redirects (re-sending the
Authorization header to whatever origin a 302 names) and opens file:// and ftp:// URLs. Here
only http/https base URLs are accepted, a redirect is an error (point base_url at the final
endpoint), `timeout_s` bounds the whole request (connect, headers and body: a watchdog closes
the socket at the deadline, so a server trickling a byte a second cannot hold a worker), and a
response larger than `max_response_bytes` is refused without being read whole.
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from reclaif.config import LLMSpec
from reclaif.errors import ConfigError, LLMError
from reclaif.llm.base import Completion, LLMClient, Settled
from reclaif.llm.retry import Backoff, Retryable, parse_retry_after
from reclaif.llm.threads import map_in_threads
from reclaif.logs import secret_from_env

# An answer is a few KB (n choices of a few hundred tokens); 8 MiB is far past any real one and
# small enough that a hostile or broken endpoint cannot fill a worker's memory.
MAX_RESPONSE_BYTES = 8 << 20


class OpenAICompatClient(LLMClient):
    """`LLMClient` over POST {base_url}/chat/completions; one request per prompt asks for n."""

    def __init__(self, spec: LLMSpec, backoff: Backoff | None = None,
                 max_response_bytes: int = MAX_RESPONSE_BYTES):
        if not spec.base_url:
            raise ConfigError("base_url: openai_compat needs an endpoint, e.g. http://host:8000/v1")
        parts = urllib.parse.urlsplit(spec.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"base_url: {spec.base_url!r} is not an http:// or https:// URL "
                              "with a host, e.g. http://host:8000/v1")
        if parts.username or parts.password:
            raise ConfigError("base_url: put no credentials in the URL; name the variable that "
                              "holds the key in api_key_env")
        self.spec = spec
        self.url = spec.base_url.rstrip("/") + "/chat/completions"
        self._parts = urllib.parse.urlsplit(self.url)
        self.max_response_bytes = max_response_bytes
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
        return map_in_threads(
            lambda ip: self._settle(ip[1], n, temperature, top_p, max_new_tokens, seed + ip[0]),
            list(enumerate(prompts)), self.spec.max_concurrency)

    def sample(self, prompts: list[str], n: int = 1, temperature: float = 1.0,
               top_p: float = 1.0, max_new_tokens: int = 256,
               seed: int = 0) -> list[list[Completion]]:
        """`generate` with each choice's finish_reason ("length": truncated at max_tokens)."""
        if not prompts:
            return []
        return map_in_threads(
            lambda ip: self.completions(ip[1], n, temperature, top_p, max_new_tokens,
                                        seed + ip[0]),
            list(enumerate(prompts)), self.spec.max_concurrency)

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
        """n answers to one prompt (their texts; see `completions`)."""
        return [c.text for c in self.completions(prompt, n, temperature, top_p,
                                                 max_new_tokens, seed, on_retry)]

    def completions(self, prompt: str, n: int, temperature: float, top_p: float,
                    max_new_tokens: int, seed: int,
                    on_retry: Callable[[Retryable], None] | None = None) -> list[Completion]:
        """n answers to one prompt. Greedy asks once and repeats; a server that returns fewer
        choices than asked (some ignore n) is asked again for the rest."""
        want = 1 if temperature <= 0 else n
        answers: list[Completion] = []
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

    def _attempt(self, body: dict[str, Any]) -> list[Completion]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = secret_from_env(self.spec.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        status, resp_headers, raw = self._post(json.dumps(body).encode(), headers)
        where = f"{self.url} (model {self.spec.model})"
        if 300 <= status < 400:
            # Never followed: the request carries the key, and the target may be anyone.
            raise LLMError(f"{where}: HTTP {status} redirect not followed; set base_url to the "
                           "endpoint that answers")
        if status == 429 or status >= 500:
            raise Retryable(f"HTTP {status}: {raw[:300].decode('utf-8', 'replace')}",
                            parse_retry_after(resp_headers.get("Retry-After")))
        if status >= 400:
            raise LLMError(f"{where}: HTTP {status}: {raw[:300].decode('utf-8', 'replace')}")
        try:
            data = json.loads(raw)
            # finish_reason "length": the answer hit max_tokens; absent: the server does not say
            return [Completion(c["message"]["content"] or "",
                               truncated=(None if c.get("finish_reason") is None
                                          else c["finish_reason"] == "length"))
                    for c in data["choices"]]
        except (ValueError, KeyError, TypeError) as e:
            raise LLMError(f"{where}: malformed response ({type(e).__name__}: {e}): "
                           f"{raw[:200]!r}") from None

    def _post(self, payload: bytes, headers: dict[str, str]) -> tuple[int, Any, bytes]:
        """One POST under one deadline: (status, headers, body of at most the cap)."""
        u, timeout = self._parts, float(self.spec.timeout_s)
        path = u.path + (f"?{u.query}" if u.query else "")
        if u.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                u.hostname, u.port, timeout=timeout, context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        expired = threading.Event()

        def abort() -> None:
            expired.set()
            if conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        watchdog = threading.Timer(timeout, abort)
        watchdog.daemon = True
        watchdog.start()
        deadline = time.monotonic() + timeout
        try:
            conn.request("POST", path, body=payload, headers=headers)
            resp = conn.getresponse()
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > self.max_response_bytes:
                raise LLMError(f"{self.url} (model {self.spec.model}): response of {length} "
                               f"bytes is over the {self.max_response_bytes}-byte limit")
            chunks, size = [], 0
            while True:
                chunk = resp.read1(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise LLMError(f"{self.url} (model {self.spec.model}): response is over "
                                   f"the {self.max_response_bytes}-byte limit")
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    expired.set()
                    break
            if expired.is_set():
                raise Retryable(f"no complete response within timeout_s={timeout:g} s")
            if length and length.isdigit() and size < int(length):
                raise Retryable(f"connection closed after {size} of {length} bytes")
            return resp.status, resp.headers, b"".join(chunks)
        except (OSError, http.client.HTTPException) as e:
            if expired.is_set() or isinstance(e, (socket.timeout, TimeoutError)):
                raise Retryable(f"no complete response within timeout_s={timeout:g} s") from None
            raise Retryable(f"{type(e).__name__}: {e}") from None
        finally:
            watchdog.cancel()
            conn.close()
