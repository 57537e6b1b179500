"""Fan shards of work out over Ray actors with backpressure, retries and actor restarts (or, with
`ray.enabled: false`, run them one after another in this process: `LocalPool`).

Each shard is a list of JSON records. At most `max_in_flight` shards are submitted at once; a
finished shard is handed to `write` (which writes it atomically) before the next is submitted,
so the driver's memory stays bounded on the full dataset. An actor that dies is replaced and its
shard retried; a shard whose method keeps raising (an endpoint that keeps failing) is written
with its records marked failed after `max_retries`, and the run goes on.
"""
from __future__ import annotations

import logging
import signal
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from reclaif.config import RayConfig
from reclaif.errors import ConfigError, ReclaifError

log = logging.getLogger(__name__)


@dataclass
class PoolReport:
    shards: int = 0
    skipped: int = 0
    retries: int = 0
    actor_restarts: int = 0
    failed_records: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"shards": self.shards, "skipped": self.skipped, "retries": self.retries,
                "actor_restarts": self.actor_restarts, "failed_records": self.failed_records,
                "errors": self.errors[:10]}


def failed_rows(rows: list[dict], error: str) -> list[dict]:
    """What a shard that failed for good leaves behind: one marked record per input record."""
    return [{"example_id": r.get("example_id", r.get("id")), "failed": True, "error": error[:500]}
            for r in rows]


class PoolWorker:
    """What every worker class of a pool has besides its own methods: `where`, which the pool
    asks before killing its actors so that it can wait for their processes to end."""

    def where(self) -> dict:
        """{node, pid}: where this actor runs."""
        return actor_location()


def _start(shards: list[list[dict]], is_done: Callable[[int], bool],
           desc: str) -> tuple[PoolReport, deque, dict[int, int], tqdm]:
    """What both pools' `run` starts from: the report, the shards still to do (done ones
    skipped: resume), their attempt counts and the progress bar."""
    report = PoolReport(shards=len(shards))
    pending = deque(i for i in range(len(shards)) if not is_done(i))
    report.skipped = len(shards) - len(pending)
    bar = tqdm(total=len(shards), initial=report.skipped, desc=desc, unit="shard", disable=None)
    return report, pending, {i: 0 for i in pending}, bar


def _finish(i: int, rows: list[dict], write: Callable[[int, list[dict]], None],
            report: PoolReport, bar: tqdm) -> None:
    """A shard's answer, as both pools record it: written, its failed records counted."""
    write(i, rows)
    report.failed_records += sum(1 for r in rows if r.get("failed"))
    bar.update(1)


WAIT_SLICE_S = 1.0  # how long one ray.wait may block (see _wait_one)


def _wait_one(refs: list) -> Any:
    """The first of `refs` to finish. Waits in slices: a ray.wait without a timeout (Ray 2.x)
    lost a SIGTERM sent while it blocked, so `reclaif run` went on for the rest of the phase
    (tests/test_pool.py). With a timeout, Ray's wait runs Python's signal handlers as it
    waits, and one that raises (the command's Terminated, Ctrl-C's KeyboardInterrupt) comes out
    as a SystemError around it, unwrapped here."""
    import ray

    while True:
        try:
            done, _ = ray.wait(refs, num_returns=1, timeout=WAIT_SLICE_S)
        except SystemError as e:
            cause = e.__context__
            if isinstance(cause, BaseException) and not isinstance(cause, Exception):
                raise cause from None
            raise
        if done:
            return done[0]


class ActorPool:
    """`num_actors` instances of `worker_cls` (a PoolWorker) as Ray actors."""

    def __init__(self, worker_cls: type, init_args: tuple, num_actors: int = 1,
                 num_cpus: float = 1, num_gpus: float = 0, gpu_keys: str = "num_gpus") -> None:
        """gpu_keys: the config keys that asked for the GPUs, named when the cluster lacks them."""
        import ray

        need = max(1, num_actors) * num_gpus
        have = ray.cluster_resources().get("GPU", 0)
        if need > have:
            # Ray would queue the actors and wait for GPUs that never come, silently.
            raise ConfigError(f"{gpu_keys}: {max(1, num_actors)} actors x {num_gpus:g} GPU need "
                              f"{need:g} GPUs; the Ray cluster has {have:g}")
        self._remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(worker_cls)
        self._init_args = init_args
        self.actors = [self._new() for _ in range(max(1, num_actors))]

    def _new(self):
        return self._remote.remote(*self._init_args)

    def run(self, method: str, shards: list[list[dict]], args: Callable[[int], tuple],
            write: Callable[[int, list[dict]], None], is_done: Callable[[int], bool],
            max_in_flight: int = 4, max_retries: int = 3, desc: str = "") -> PoolReport:
        """Runs `actor.method(shard_rows, *args(i))` for every shard i not already done."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        report, pending, attempts, bar = _start(shards, is_done, desc)
        in_flight: dict[Any, tuple[int, int, Any]] = {}  # ref → (shard, slot, actor handle)
        while pending or in_flight:
            while pending and len(in_flight) < max_in_flight:
                i = pending.popleft()
                load = [sum(1 for _, s, _ in in_flight.values() if s == k)
                        for k in range(len(self.actors))]
                slot = load.index(min(load))  # the least busy actor
                actor = self.actors[slot]
                in_flight[getattr(actor, method).remote(shards[i], *args(i))] = (i, slot, actor)
            ref = _wait_one(list(in_flight))
            i, slot, actor = in_flight.pop(ref)
            try:
                rows = ray.get(ref)
            except RayActorError as e:
                # The actor process died (killed, OOM): replace it and retry the shard.
                log.warning("%s: actor died on shard %d (%s); restarting it", desc, i, type(e).__name__)
                if self.actors[slot] is actor:  # other shards it held fail too; replace once
                    report.actor_restarts += 1
                    self._replace(slot)
                self._retry_or_fail(i, attempts, max_retries, pending, shards, write, report,
                                    f"actor died: {type(e).__name__}")
                continue
            except RayTaskError as e:
                cause = e.cause or e  # the exception the task raised (Ray >= 2.30 keeps it)
                log.warning("%s: shard %d failed: %s", desc, i, cause)
                self._retry_or_fail(i, attempts, max_retries, pending, shards, write, report,
                                    f"{type(cause).__name__}: {cause}")
                continue
            _finish(i, rows, write, report, bar)
        bar.close()
        return report

    def _replace(self, slot: int) -> None:
        import ray

        try:
            ray.kill(self.actors[slot], no_restart=True)
        except Exception:  # already gone
            pass
        self.actors[slot] = self._new()

    @staticmethod
    def _retry_or_fail(i: int, attempts: dict[int, int], max_retries: int, pending: deque,
                       shards: list[list[dict]], write: Callable, report: PoolReport,
                       error: str) -> None:
        attempts[i] += 1
        if attempts[i] <= max_retries:
            report.retries += 1
            pending.append(i)
            return
        report.errors.append(f"shard {i}: {error}")
        rows = failed_rows(shards[i], error)
        report.failed_records += len(rows)
        write(i, rows)

    def shutdown(self, wait_s: float = 0.0) -> list[dict]:
        """Kills every actor. With `wait_s` > 0, then waits until each actor's process is gone
        from its node (and from the node's GPU process list, where nvidia-smi exists), so a
        trainer started next finds the memory free; raises ReclaifError after `wait_s`.
        Returns where the actors ran: [{node, pid}] (those that answered before the kill)."""
        import ray

        where: list[dict] = []
        if wait_s > 0 and self.actors:
            # Ask first: once killed an actor cannot say which process it was.
            refs = [a.where.remote() for a in self.actors]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=min(30.0, wait_s))
            for ref in ready:
                try:
                    where.append(ray.get(ref))
                except Exception:  # the actor already died: its process is gone
                    pass
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        self.actors = []
        if where:
            wait_processes_gone(where, wait_s)
        return where


class LocalPool:
    """One worker in this process, no Ray (`ray.enabled: false`): shards run one after
    another, a shard whose method raises is retried and then written as failed, as on Ray.
    For one machine where Ray is not installed (the lent GPU machine: docs/CLUSTER.md, "The GPU
    proof"); the sampler's model sits in the driver's process until `shutdown` drops it."""

    def __init__(self, worker_cls: type, init_args: tuple) -> None:
        self.actors = [worker_cls(*init_args)]

    def run(self, method: str, shards: list[list[dict]], args: Callable[[int], tuple],
            write: Callable[[int, list[dict]], None], is_done: Callable[[int], bool],
            max_in_flight: int = 1, max_retries: int = 3, desc: str = "") -> PoolReport:
        """Runs `worker.method(shard_rows, *args(i))` for every shard i not already done."""
        report, pending, attempts, bar = _start(shards, is_done, desc)
        while pending:
            i = pending.popleft()
            try:
                rows = getattr(self.actors[0], method)(shards[i], *args(i))
            except Exception as e:  # what a Ray task's failure is (RayTaskError's cause)
                log.warning("%s: shard %d failed: %s", desc, i, e)
                ActorPool._retry_or_fail(i, attempts, max_retries, pending, shards, write,
                                         report, f"{type(e).__name__}: {e}")
                continue
            _finish(i, rows, write, report, bar)
        bar.close()
        return report

    def shutdown(self, wait_s: float = 0.0) -> list[dict]:
        """Drops the worker and returns its GPU memory to the device (the trainer that follows
        runs in this process too)."""
        import gc
        import sys

        self.actors = []
        gc.collect()
        torch = sys.modules.get("torch")  # loaded by a sampler; a judge may never import it
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return []


def make_pool(ray_cfg: RayConfig, worker_cls: type, init_args: tuple, num_actors: int = 1,
              num_cpus: float = 1, num_gpus: float = 0,
              gpu_keys: str = "num_gpus") -> ActorPool | LocalPool:
    """The driver's pools: Ray actors (a local Ray started on first use, or `ray.address`'s
    cluster), or with `ray.enabled: false` one worker in this process."""
    if not ray_cfg.enabled:
        return LocalPool(worker_cls, init_args)
    init_ray(ray_cfg.address, ray_cfg.num_cpus)
    return ActorPool(worker_cls, init_args, num_actors=num_actors, num_cpus=num_cpus,
                     num_gpus=num_gpus, gpu_keys=gpu_keys)


def actor_location() -> dict:
    """{node, pid} of the calling actor (PoolWorker.where)."""
    import os

    import ray

    return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


def _gone_on_this_node(pids: list[int], timeout_s: float) -> list[int]:
    """Waits until none of `pids` runs here (a zombie holds no memory) nor holds a GPU context
    (nvidia-smi's compute apps, where the tool exists); returns those still there at the end."""
    import shutil
    import subprocess
    import time

    import psutil

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def on_gpu() -> set[int]:
        if not shutil.which("nvidia-smi"):
            return set()
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
        return {int(x) for x in out.split() if x.strip().isdigit()}

    deadline = time.monotonic() + timeout_s
    while True:
        gpu = on_gpu()
        left = [p for p in pids if running(p) or p in gpu]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def wait_processes_gone(where: list[dict], timeout_s: float) -> None:
    """Runs one probe task on each node the processes ran on (pinned there, no resources, so it
    is placed even while other actors hold the node) and waits for all of them."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    by_node: dict[str, list[int]] = {}
    for w in where:
        by_node.setdefault(w["node"], []).append(int(w["pid"]))
    probe = ray.remote(num_cpus=0)(_gone_on_this_node)
    refs = {node: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        node, soft=False)).remote(pids, timeout_s) for node, pids in by_node.items()}
    left = {node: ray.get(ref) for node, ref in refs.items()}
    stuck = {n: p for n, p in left.items() if p}
    if stuck:
        raise ReclaifError(f"actors killed but their processes still run (or hold a GPU) after "
                           f"{timeout_s:.0f} s: {stuck} (node id: pids); training would not find "
                           f"the GPU memory free. Check `nvidia-smi` on those nodes")


def init_ray(address: str = "", num_cpus: int = 2) -> None:
    """A local Ray (one machine) or an existing cluster (`address`, e.g. 'auto' or host:port)."""
    import os

    import ray

    if ray.is_initialized():
        return
    # Workers must find the package even when it is not installed (tests run from a checkout).
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
        p for p in [here, os.environ.get("PYTHONPATH", "")] if p)}}
    for key in ("RECLAIF_FAULTS", "RECLAIF_FAULT_DIR", "RECLAIF_CACHE", "HF_HUB_OFFLINE",
                "TRANSFORMERS_OFFLINE"):
        if key in os.environ:
            env["env_vars"][key] = os.environ[key]
    # ray.init installs its own SIGTERM handler (it dumps a C++ stack trace): the `reclaif`
    # command's one-line, resumable exit is put back where it was installed.
    ours = signal.getsignal(signal.SIGTERM)
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    else:
        # Ray starts a local cluster's workers at nice +15 so its driver stays responsive; here
        # the workers do the heavy part (sampling, judging, evaluation) while the driver waits
        # on them, so any other job on the machine (a test run, a second experiment) would take
        # their CPU and stall the run. They get the driver's priority unless the user set one.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=env,
                 log_to_driver=False, configure_logging=False)
    if getattr(ours, "__module__", "").startswith("reclaif") and \
            threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, ours)
