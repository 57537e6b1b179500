"""The shard fan-out every pool phase runs (sampling, evaluation, judging): rows cut into
`ray.shard_size` shards, each written atomically with its record as it comes back, a resumed
phase redoing only the shards that are not whole on disk, then one merged file."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from reclaif.atomic import atomic_write_json
from reclaif.config import RayConfig
from reclaif.distributed.pool import ActorPool, PoolReport
from reclaif.faults import maybe_fail
from reclaif.pipeline.store import RunStore


def shard_seed(*parts: Any) -> int:
    """A stable per-shard seed, so a retried shard samples exactly what the first attempt did."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def shards(rows: list[dict], size: int) -> list[list[dict]]:
    return [rows[i:i + size] for i in range(0, len(rows), max(1, size))]


def fan_out(store: RunStore, key: str, rows: list[dict], shard_dir: Path, out: Path,
            report_file: Path, ray: RayConfig,
            pool: Callable[[], AbstractContextManager[ActorPool]], method: str,
            args: Callable[[int], tuple]) -> list[dict]:
    """Runs `method` of `pool()`'s actors on each shard of `rows` not yet done in `shard_dir`
    (`args(i)`: the call's arguments for shard i), merges the shards into `out` and writes the
    pool's report to `report_file`; returns the merged rows. Where every shard is done (a
    phase killed after its last shard), no pool is started."""
    parts = shards(rows, ray.shard_size)
    shard_dir.mkdir(parents=True, exist_ok=True)

    def write(i: int, result: list[dict]) -> None:
        store.write_shard(shard_dir, i, result)
        maybe_fail(f"{key}:written:{i}")

    def done(i: int) -> bool:
        return store.shard_done(shard_dir, i)

    if all(done(i) for i in range(len(parts))):
        report = PoolReport(shards=len(parts), skipped=len(parts))
    else:
        with pool() as actors:
            report = actors.run(method, parts, args, write=write, is_done=done,
                                max_in_flight=ray.max_in_flight, max_retries=ray.max_retries,
                                desc=key)
    merged = store.merge_shards(shard_dir, len(parts), out)
    atomic_write_json(report_file, report.to_json())
    return merged
