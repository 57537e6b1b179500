"""The HTTP backends' concurrency: one request per job on a few daemon threads.

Written by hand rather than with concurrent.futures because its worker threads are joined at
interpreter exit: a SIGTERM or Ctrl-C during a request reached the command at once, but the
process then waited for the request in flight (up to `timeout_s`, 60 s by default) before it
could exit. Daemon threads die with the process; the requests they hold are abandoned, which a
client may always do (every write of a run is atomic, and a rerun asks again).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_in_threads(fn: Callable[[T], R], jobs: Sequence[T], workers: int) -> list[R]:
    """[fn(job) for job in jobs], run on up to `workers` daemon threads, in job order. Every job
    runs; then the first job's exception (in job order), if any, is raised, as
    `list(ThreadPoolExecutor.map(...))` inside its `with` block does. A signal handled in the
    calling thread (SIGTERM, Ctrl-C) interrupts the wait and leaves the threads behind."""
    if not jobs:
        return []
    results: list = [None] * len(jobs)
    errors: list[Exception | None] = [None] * len(jobs)
    order = iter(range(len(jobs)))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                i = next(order, None)
            if i is None:
                return
            try:
                results[i] = fn(jobs[i])
            except Exception as e:  # noqa: BLE001 (re-raised in the caller's thread below)
                errors[i] = e

    threads = [threading.Thread(target=work, name=f"reclaif-request-{k}", daemon=True)
               for k in range(max(1, min(workers, len(jobs))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return results
