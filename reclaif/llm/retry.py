"""Bounded retries with exponential backoff and full jitter, shared by the remote clients.

A call is retried only when the error says so (`Retryable`); anything else is final at once, so
a malformed request never burns the retry budget. `Retry-After` from the server wins over the
computed delay (capped, so a misbehaving server cannot park a worker for an hour).
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Retryable(Exception):
    """Raised by an attempt that may succeed if tried again (throttling, 5xx, timeouts)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Backoff:
    max_retries: int = 5
    base_s: float = 0.5
    max_s: float = 30.0
    max_retry_after_s: float = 120.0
    # Injected so tests can record delays instead of sleeping.
    sleep: Callable[[float], None] = time.sleep

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0-based): full jitter, or Retry-After."""
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_retry_after_s)
        return random.uniform(0, min(self.max_s, self.base_s * (2 ** attempt)))

    def run(self, attempt_fn: Callable[[], T], what: str,
            on_give_up: Callable[[Retryable, int], Exception],
            on_retry: Callable[[Retryable], None] | None = None) -> T:
        """Calls `attempt_fn` until it returns, raises a non-Retryable, or retries run out.

        `on_give_up(last_error, attempts)` builds the final error (an LLMError naming the model).
        `on_retry(error)` is told of every retry, so callers can count what a record cost.
        """
        for attempt in range(self.max_retries + 1):
            try:
                return attempt_fn()
            except Retryable as e:
                if attempt == self.max_retries:
                    raise on_give_up(e, attempt + 1) from None
                if on_retry is not None:
                    on_retry(e)
                wait = self.delay(attempt, e.retry_after)
                log.warning("%s: %s; retry %d/%d in %.2f s", what, e, attempt + 1,
                            self.max_retries, wait)
                self.sleep(wait)
        raise AssertionError("unreachable")


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (the HTTP-date form is rare from LLM APIs; it falls back to None)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
