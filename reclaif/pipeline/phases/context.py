"""What every phase reads: the opened run (`open_run`), and the sampler pool the generating
phases share."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from reclaif.config import RunConfig
from reclaif.config_load import to_dict
from reclaif.data import load_items, resolve_data_dir
from reclaif.data.heldout import HeldOut
from reclaif.data.splits import run_splits
from reclaif.distributed.pool import ActorPool, LocalPool, make_pool
from reclaif.distributed.workers import SamplerWorker
from reclaif.pipeline.store import RunStore
from reclaif.records import Example, Item


class Samplers:
    """The sampler pool, on one model at a time. Ray starts on first use: a resumed run whose
    remaining phases need no actor (training, a finished run) skips the seconds a local Ray
    takes."""

    def __init__(self, cfg: RunConfig, store: RunStore, data_path: Path) -> None:
        self.cfg, self.store, self.data_path = cfg, store, data_path
        self._pool: ActorPool | LocalPool | None = None
        self._model: str | None = None

    def on(self, model: str) -> ActorPool | LocalPool:
        """The pool on `model`: a pool on another checkpoint is released first, so new weights
        come as new actors (no engine swapped inside a process that holds a GPU)."""
        if self._pool is not None and self._model != model:
            self.release()
        if self._pool is None:
            r = self.cfg.ray
            cpus = max(1, r.num_cpus // max(1, r.num_samplers)) if not r.address else 1
            spec = to_dict(self.cfg.recommender)
            # without Ray the sampler is in this process: 0 leaves its torch threads (the
            # trainer's too) as they are, ray.num_cpus being the local Ray's
            threads = cpus if r.enabled else 0
            self._pool = make_pool(r, SamplerWorker,
                                   (spec, str(self.data_path), self.cfg.data.top_k, threads),
                                   num_actors=r.num_samplers, num_cpus=cpus if not r.address else 1,
                                   num_gpus=r.gpus_per_sampler,
                                   gpu_keys="ray.num_samplers x ray.gpus_per_sampler")
            self._model = model
            self.store.append_event("samplers:up", model=model, actors=len(self._pool.actors))
        return self._pool

    def release(self) -> None:
        """Kills the sampler actors and waits until their processes are gone from their nodes
        (and from nvidia-smi): what holds the GPUs (vLLM takes 90% of each) must have let go
        before a trainer or the judges start on them, on one machine or a cluster."""
        if self._pool is None:
            return
        t0 = time.time()
        where = self._pool.shutdown(wait_s=self.cfg.ray.release_timeout_s)
        self._pool = self._model = None
        self.store.append_event("samplers:released", processes=where,
                                seconds=round(time.time() - t0, 2))


@dataclass
class Run:
    """An opened run: its frozen config, its directory, the item catalog, the splits (the
    evidence phase gives `train` and `evaluation` their evidence) and the sampler pool."""

    cfg: RunConfig
    store: RunStore
    data_path: Path
    items: dict[str, Item]
    train: list[Example]
    evaluation: list[Example]
    held_out: HeldOut
    windows: list[Example]
    samplers: Samplers

    @property
    def top_k(self) -> int:
        return self.cfg.data.top_k


def open_run(cfg: RunConfig, run_dir: str | Path) -> Run:
    """Reads a run's inputs, checks its evaluation examples are held out, then freezes its
    config in `run_dir` (a later start must use the same config on the same data)."""
    store = RunStore(run_dir)
    # The inputs are read before the config is frozen: a first start that fails on bad input
    # (a wrong data.path) leaves nothing behind, so its corrected rerun is not refused as
    # "another config".
    data_path = resolve_data_dir(cfg.data.path)
    items = load_items(data_path)
    splits = run_splits(cfg.data)
    cfg = store.freeze_config(cfg)
    return Run(cfg, store, data_path, items, splits.train, splits.evaluation, splits.held,
               splits.windows, Samplers(cfg, store, data_path))
