"""ActorPool on a real local Ray: backpressure, atomic shard files, actor death, failing endpoints."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from reclaif.distributed.pool import PoolWorker
from reclaif.pipeline.store import RunStore


class EchoWorker(PoolWorker):
    """Doubles numbers; dies (os._exit) or raises on request, once per marker file."""

    def __init__(self, marker_dir: str) -> None:
        self.marker_dir = marker_dir

    def work(self, rows: list[dict], mode: str) -> list[dict]:
        if mode == "slow":  # a sampler's shard: minutes
            time.sleep(60)
        marker = os.path.join(self.marker_dir, f"{mode}-{rows[0]['x']}")
        if mode == "die" and rows[0]["x"] == 4 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the actor process dies in the middle of the shard
        if mode == "raise" and rows[0]["x"] == 4:
            raise RuntimeError("endpoint keeps answering 500")
        return [{"example_id": r["x"], "y": 2 * r["x"]} for r in rows]


@pytest.fixture(scope="module")
def ray_local():
    import ray
    from ray import cloudpickle

    from reclaif.distributed.pool import init_ray

    # The worker class lives in this test module, which Ray workers cannot import by name.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    from reclaif.cli import _terminate

    before = signal.signal(signal.SIGTERM, _terminate)  # as `reclaif run` has it
    init_ray("", num_cpus=2)
    # ray.init installs its own SIGTERM handler (a C++ stack dump); the command's comes back
    assert signal.getsignal(signal.SIGTERM) is _terminate
    signal.signal(signal.SIGTERM, before)
    yield ray
    ray.shutdown()


def _run(tmp_path, mode: str, max_retries: int = 2):
    from reclaif.distributed.pool import ActorPool

    store = RunStore(tmp_path / "run")
    shard_dir = store.phase_dir("shards")
    shards = [[{"id": 2 * i, "x": 2 * i}, {"id": 2 * i + 1, "x": 2 * i + 1}] for i in range(5)]
    pool = ActorPool(EchoWorker, (str(tmp_path),), num_actors=2, num_cpus=0.5)
    try:
        report = pool.run("work", shards, lambda i: (mode,),
                          write=lambda i, rows: store.write_shard(shard_dir, i, rows),
                          is_done=lambda i: store.shard_done(shard_dir, i),
                          max_in_flight=2, max_retries=max_retries, desc=mode)
    finally:
        pool.shutdown()
    rows = store.merge_shards(shard_dir, len(shards), tmp_path / "out.jsonl")
    return report, rows


def test_sigterm_while_shards_are_in_flight_stops_the_run_at_once(ray_local, tmp_path):
    """`reclaif run`'s handler raises Terminated in the main thread, which must not sit in a
    C++ wait until the shard in flight (60 s here) ends."""
    from reclaif.cli import _terminate
    from reclaif.errors import Terminated

    before = signal.signal(signal.SIGTERM, _terminate)
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
    start = time.monotonic()
    try:
        timer.start()
        with pytest.raises(Terminated):
            _run(tmp_path, "slow")
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, before)
    assert time.monotonic() - start < 20, "the driver waited for the shard in flight"


def test_local_workers_run_at_the_drivers_priority(ray_local):
    # Ray's default (+15) would starve the run's samplers beside any other job on the machine.
    @ray_local.remote
    def niceness() -> int:
        return os.nice(0)

    assert ray_local.get(niceness.remote()) == os.nice(0)


def test_every_shard_is_written_once_in_order(ray_local, tmp_path):
    report, rows = _run(tmp_path, "ok")
    assert [r["example_id"] for r in rows] == list(range(10))
    assert [r["y"] for r in rows] == [2 * x for x in range(10)]
    assert report.retries == 0 and report.failed_records == 0


def test_killed_actor_is_replaced_and_its_shard_retried(ray_local, tmp_path):
    report, rows = _run(tmp_path, "die")
    assert report.actor_restarts == 1 and report.retries == 1
    assert [r["example_id"] for r in rows] == list(range(10))
    assert not any(r.get("failed") for r in rows)


def test_shard_that_keeps_failing_is_marked_failed_and_the_run_goes_on(ray_local, tmp_path):
    report, rows = _run(tmp_path, "raise", max_retries=2)
    failed = [r for r in rows if r.get("failed")]
    assert [r["example_id"] for r in failed] == [4, 5]
    assert "endpoint keeps answering 500" in failed[0]["error"]
    assert report.retries == 2 and report.failed_records == 2
    assert len(rows) == 10


def test_done_shards_are_skipped_on_rerun(ray_local, tmp_path):
    _run(tmp_path, "ok")
    report, rows = _run(tmp_path, "ok")
    assert report.skipped == 5 and len(rows) == 10



def test_gpu_actors_on_a_cluster_without_those_gpus_are_a_named_error(ray_local, tmp_path):
    """Ray queues an actor whose GPUs no node has and waits forever, saying nothing; the pool
    refuses at once, naming the config keys that asked for them."""
    from reclaif.distributed.pool import ActorPool
    from reclaif.errors import ConfigError

    have = ray_local.cluster_resources().get("GPU", 0)
    each = have + 1  # more than the whole cluster has, even for one actor
    with pytest.raises(ConfigError, match=rf"^ray.num_samplers x ray.gpus_per_sampler: 2 actors "
                                          rf"x {each:g} GPU need {2 * each:g} GPUs; the Ray "
                                          rf"cluster has {have:g}$"):
        ActorPool(EchoWorker, (str(tmp_path),), num_actors=2, num_cpus=0.5, num_gpus=each,
                  gpu_keys="ray.num_samplers x ray.gpus_per_sampler")


# ------------------------------------------- LocalPool: the same contract without Ray (ray.enabled)

def _run_local(tmp_path, mode: str, max_retries: int = 2):
    """`_run`'s shards through make_pool with ray.enabled false, Ray made unimportable."""
    from reclaif.config import RayConfig
    from reclaif.distributed.pool import LocalPool, make_pool

    store = RunStore(tmp_path / "run")
    shard_dir = store.phase_dir("shards")
    shards = [[{"id": 2 * i, "x": 2 * i}, {"id": 2 * i + 1, "x": 2 * i + 1}] for i in range(5)]
    pool = make_pool(RayConfig(enabled=False), EchoWorker, (str(tmp_path),), num_actors=1)
    assert isinstance(pool, LocalPool)
    report = pool.run("work", shards, lambda i: (mode,),
                      write=lambda i, rows: store.write_shard(shard_dir, i, rows),
                      is_done=lambda i: store.shard_done(shard_dir, i),
                      max_retries=max_retries, desc=mode)
    pool.shutdown()
    assert pool.actors == []
    return report, store.merge_shards(shard_dir, len(shards), tmp_path / "out.jsonl")


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as where it is absent


def test_local_pool_writes_every_shard_in_order_without_ray(no_ray, tmp_path):
    report, rows = _run_local(tmp_path, "ok")
    assert [r["y"] for r in rows] == [2 * x for x in range(10)]
    assert report.shards == 5 and report.retries == 0 and report.failed_records == 0


def test_local_pool_marks_a_shard_that_keeps_failing_and_goes_on(no_ray, tmp_path):
    report, rows = _run_local(tmp_path, "raise", max_retries=2)
    failed = [r for r in rows if r.get("failed")]
    assert [r["example_id"] for r in failed] == [4, 5]
    assert "RuntimeError: endpoint keeps answering 500" in failed[0]["error"]
    assert report.retries == 2 and report.failed_records == 2 and len(rows) == 10


def test_local_pool_skips_done_shards_on_rerun(no_ray, tmp_path):
    _run_local(tmp_path, "ok")
    report, rows = _run_local(tmp_path, "ok")
    assert report.skipped == 5 and len(rows) == 10


def test_ray_settings_without_ray_are_refused():
    from reclaif.config_load import load_config
    from reclaif.errors import ConfigError

    for key in ("ray.num_samplers=2", "ray.num_judges=2", "ray.address=auto",
                "ray.gpus_per_sampler=1"):
        with pytest.raises(ConfigError, match=f"^{key.split('=')[0]}: .*ray.enabled is false"):
            load_config(None, ["ray.enabled=false", key])
