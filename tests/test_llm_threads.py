"""llm/threads.py: the HTTP backends' requests on daemon threads, in job order."""
from __future__ import annotations

import threading
import time

import pytest

from reclaif.llm.threads import map_in_threads


def test_results_in_job_order_on_at_most_workers_threads():
    running, peak, lock = 0, 0, threading.Lock()

    def job(x: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01 * (x % 3))  # finish out of order
        with lock:
            running -= 1
        return x * x

    assert map_in_threads(job, list(range(12)), 4) == [x * x for x in range(12)]
    assert 1 < peak <= 4
    assert map_in_threads(job, [], 4) == []
    assert map_in_threads(job, [5], 0) == [25]  # at least one thread


def test_every_job_runs_then_the_first_error_in_job_order_is_raised():
    done: list[int] = []

    def job(x: int) -> int:
        time.sleep(0.02 if x == 1 else 0.0)
        if x in (1, 3):
            raise ValueError(f"job {x}")
        done.append(x)
        return x

    with pytest.raises(ValueError, match="job 1"):
        map_in_threads(job, [0, 1, 2, 3, 4], 2)
    assert sorted(done) == [0, 2, 4]


def test_the_threads_are_daemons():
    names: list[tuple[str, bool]] = []
    map_in_threads(lambda _: names.append((threading.current_thread().name,
                                           threading.current_thread().daemon)), [0, 1], 2)
    assert names and all(daemon and name.startswith("reclaif-request-") for name, daemon in names)
