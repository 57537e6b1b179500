"""The run directory (docs/ARCHITECTURE.md, "Run directory"): frozen config, a manifest of
finished phases, shard files.

Every file is written to a temporary name and renamed (reclaif.atomic), so a SIGKILL at any
moment leaves either the old state or the new one. What is on disk is still never trusted for
existing, only for matching what was recorded when it was written:
- a shard is done only when its record (`shard-NNNNN.sum.json`: rows, bytes, sha256, written
  after the shard) matches the shard file; a shard cut at any byte, edited, or missing its record
  is redone, never merged;
- a phase is done only when its manifest entry says so and each output it recorded still has
  its size and row count (and its sha256, for files up to `VERIFY_HASH_BYTES`; checkpoint weights
  above it are checked by size, so a resume does not re-read gigabytes), else it is redone;
- the frozen config is the config *and* the dataset: the manifest keeps the sha256 of
  config.yaml and of every dataset file, and a later start with other data is refused;
- a corrupt manifest.json or config.yaml is a one-line error naming the file and what to do;
  a corrupt timings.json (informational) is moved aside with a warning.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reclaif.atomic import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from reclaif.config import RunConfig
from reclaif.config_load import dump_config, to_dict
from reclaif.errors import ConfigError, ReclaifError
from reclaif.run_config import load_run_config, read_manifest, sha256_of
from reclaif.run_layout import RunLayout, stage_name
from reclaif.data import resolve_data_dir

log = logging.getLogger(__name__)
VERIFY_HASH_BYTES = 64 << 20


def file_hash(path: str | os.PathLike, full: bool = False) -> str:
    h = sha256_of(path)
    return h if full else h[:16]


def file_record(path: Path) -> dict[str, Any]:
    """What is recorded of an output: bytes, sha256, and rows for JSON lines."""
    data_rows = None
    if path.suffix == ".jsonl":
        with open(path, "rb") as f:
            data_rows = sum(1 for line in f if line.strip())
    rec: dict[str, Any] = {"bytes": path.stat().st_size, "sha256": file_hash(path, full=True)}
    if data_rows is not None:
        rec["rows"] = data_rows
    return rec


def mismatch(path: Path, rec: dict[str, Any]) -> str | None:
    """Why `path` no longer matches its record, or None where it does."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != rec.get("bytes", size):
        return f"{size} bytes, recorded {rec['bytes']}"
    if "sha256" in rec and size <= VERIFY_HASH_BYTES:
        actual = file_hash(path, full=True)
        if not actual.startswith(rec["sha256"]) or len(rec["sha256"]) < 16:
            return "content differs from the recorded sha256"
    if "rows" in rec:
        with open(path, "rb") as f:
            n = sum(1 for line in f if line.strip())
        if n != rec["rows"]:
            return f"{n} rows, recorded {rec['rows']}"
    return None


def dataset_files(data_path: Path) -> list[Path]:
    """The files a prepared dataset directory is read from (examples, items, stats)."""
    if data_path.is_file():
        return [data_path, data_path.parent / "items.jsonl"]
    return sorted(data_path.glob("examples*.jsonl")) + [data_path / "items.jsonl"]


def dataset_fingerprint(data_path: Path) -> dict[str, str]:
    """{file name: sha256} of a dataset's files (those that exist)."""
    return {f.name: file_hash(f, full=True) for f in dataset_files(data_path) if f.is_file()}


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix[:-1]}: {a!r} → {b!r}"]


def _open_own(path: Path, flags: int) -> int:
    """os.open that refuses a symbolic link: a run's own files are never written through one
    to a file outside the run directory."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise ReclaifError(f"{path}: is a symbolic link; a run writes this file only inside "
                           "its own directory (remove the link)") from None


@dataclass
class Phase:
    """A phase as `RunStore.phase` hands it to the phase's body: whether it is already done,
    and what its manifest entry will record (`finish`)."""

    key: str
    done: bool
    outputs: list[Path] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def finish(self, outputs: list[Path] | None = None, **info: Any) -> None:
        """The files the manifest records (and checks on resume) and the entry's other fields."""
        self.outputs, self.info = list(outputs or []), info


class RunStore(RunLayout):
    """One run directory. All paths a phase reads or writes come from here: the names from
    `RunLayout` (reclaif/run_layout.py, which the trainers share), the rest below."""

    def __init__(self, root: str | os.PathLike) -> None:
        super().__init__(root)
        self.manifest_path = self.root / "manifest.json"

    # config ---------------------------------------------------------------------------
    def freeze_config(self, cfg: RunConfig) -> RunConfig:
        """Writes config.yaml and the dataset's fingerprint on the first start; later starts
        must use the same config on the same data."""

        path = self.root / "config.yaml"
        self.check_timings()
        data_path = resolve_data_dir(cfg.data.path)
        fingerprint = dataset_fingerprint(data_path)
        if path.exists():
            frozen = load_run_config(self.root)
            changed = _diff(to_dict(frozen), to_dict(cfg))
            if changed:
                raise ConfigError(f"{path}: this run was started with another config; "
                                  f"use a new --run-dir or the same settings. Differences: "
                                  + "; ".join(changed[:8]))
            recorded = self.manifest().get("frozen", {}).get("dataset")
            if recorded is not None:
                moved = _diff(recorded, fingerprint)
                if moved:
                    raise ConfigError(
                        f"{data_path}: the dataset changed since this run started "
                        f"({'; '.join(moved[:4])}); restore the data it was started on or "
                        "use a new --run-dir")
                return frozen
            cfg = frozen  # started before fingerprints were kept (or killed before): keep now
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, dump_config(cfg))
        m = self.manifest()
        m["frozen"] = {"config_sha256": file_hash(path, full=True), "data_path": str(data_path),
                       "dataset": fingerprint}
        atomic_write_json(self.manifest_path, m)
        return cfg

    # who may write ----------------------------------------------------------------------
    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Holds RUN/.lock for one driver: a second `reclaif run` (or phase command) on the
        same directory is refused with one line naming the holder, instead of retraining what
        the first one is writing. An advisory kernel lock (lockf, which NFS also honours), not
        a pid file: it dies with its process, however that ends, so a lock is never stale."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = _open_own(self.root / ".lock", os.O_RDWR | os.O_CREAT)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
                raise ReclaifError(f"{self.root}: another reclaif driver is using this run "
                                   f"directory ({holder}); wait for it to end or stop it") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def require_run(self) -> None:
        """Refuses a directory no run wrote (a mistyped path, a user's own notes): commands
        that write into a run directory must not create or overwrite files elsewhere."""
        if not (self.manifest_path.is_file() or (self.root / "config.yaml").is_file()):
            raise ReclaifError(f"{self.root}: not a run directory (no manifest.json or "
                               "config.yaml); give the --run-dir of a reclaif run")

    def append_event(self, event: str, **info: Any) -> None:
        """One line of RUN/lifecycle.jsonl (sampler starts and releases, training starts and
        ends: the order GPUs change hands in). Opened without following a symlink, so the log
        cannot be pointed at a file outside the run directory."""
        line = json.dumps({"event": event, "time": round(time.time(), 3), **info}) + "\n"
        fd = _open_own(self.root / "lifecycle.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)

    # manifest ---------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.root)

    def is_done(self, phase: str) -> bool:
        """Recorded as done, and every output it recorded still matches its record."""
        entry = self.manifest()["phases"].get(phase, {})
        if entry.get("status") != "done":
            return False
        records = dict(entry.get("outputs", {}))
        # Manifests written before output records kept a 16-hex sha256 prefix per file.
        records.update({k: {"sha256": v} for k, v in entry.get("hashes", {}).items()
                        if k not in records})
        for rel, rec in records.items():
            why = mismatch(self.root / rel, rec)
            if why is not None:
                log.warning("%s: output %s no longer matches what was recorded (%s); redoing "
                            "the phase", phase, rel, why)
                return False
        return True

    def mark_done(self, phase: str, outputs: list[Path] | None = None, **info: Any) -> None:
        m = self.manifest()
        entry: dict[str, Any] = {"status": "done", **info}
        if outputs:
            entry["outputs"] = {str(p.relative_to(self.root)): file_record(p)
                                for p in outputs if p.is_file()}
        m["phases"][phase] = entry
        atomic_write_json(self.manifest_path, m)

    def check_timings(self) -> None:
        """timings.json only feeds the report: a damaged one is moved aside, not fatal."""
        path = self.root / "timings.json"
        if not path.exists():
            return
        try:
            ok = isinstance(json.loads(path.read_bytes().decode("utf-8")), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            ok = False
        if not ok:
            aside = path.with_name("timings.json.damaged")
            os.replace(path, aside)
            log.warning("%s: damaged; moved to %s, phase times start again", path, aside.name)

    def record_timing(self, key: str, seconds: float) -> None:
        """Adds one phase's wall time to timings.json (kept across restarts)."""
        self.check_timings()
        path = self.root / "timings.json"
        old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        atomic_write_json(path, {**old, key: round(seconds, 1)})

    @contextmanager
    def phase(self, key: str, *, lifecycle: str = "", timed: bool = True) -> Iterator[Phase]:
        """The skeleton every phase runs in. Done (`is_done`): the body sees `phase.done` and
        returns at once. Else the body runs; when it ends without an exception the phase is
        marked done with what it gave `phase.finish`, then `lifecycle`'s end line and its
        wall time (timings.json) are written. An exception marks nothing: the rerun redoes it.
        `lifecycle` ("train"): RUN/lifecycle.jsonl gets `train:start` and `train:end` lines."""
        p = Phase(key, self.is_done(key))
        if p.done:
            yield p
            return
        t0 = time.time()
        if lifecycle:
            self.append_event(f"{lifecycle}:start", phase=key)
        yield p
        self.mark_done(key, p.outputs, **p.info)
        if lifecycle:
            self.append_event(f"{lifecycle}:end", phase=key)
        if timed:
            seconds = time.time() - t0
            self.record_timing(key, seconds)
            log.info("phase %s done in %.1f s", key, seconds)  # a long run's progress

    # paths ------------------------------------------------------------------------------
    def phase_dir(self, name: str) -> Path:
        """A stage's directory, created."""
        d = self.stage(name)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def evidence_dir(self) -> Path:
        """evidence/: fold-N/ and full/ models, train.jsonl, eval.jsonl, baselines.json."""
        return self.phase_dir("evidence")

    def iter_dir(self, iteration: int) -> Path:
        """Iteration i's stage directory, created (`iteration(i)` only names it)."""
        return self.phase_dir(stage_name(iteration))

    # shards ---------------------------------------------------------------------------
    @staticmethod
    def shard_path(shard_dir: Path, index: int) -> Path:
        return shard_dir / f"shard-{index:05d}.jsonl"

    @staticmethod
    def shard_record_path(shard_dir: Path, index: int) -> Path:
        return shard_dir / f"shard-{index:05d}.sum.json"

    def write_shard(self, shard_dir: Path, index: int, rows: list[dict]) -> None:
        """The shard, then its record: killed between the two, the shard has no record and is
        redone; the record is never written for a shard that is not whole on disk."""
        path = self.shard_path(shard_dir, index)
        atomic_write_jsonl(path, rows)
        atomic_write_json(self.shard_record_path(shard_dir, index), file_record(path))

    def shard_mismatch(self, shard_dir: Path, index: int) -> str | None:
        """Why shard `index` is not done (missing, no record, cut, edited), or None."""
        path, rec_path = self.shard_path(shard_dir, index), self.shard_record_path(shard_dir, index)
        if not path.exists():
            return "missing"
        if not rec_path.exists():
            return "no record (written before it, or by an older version)"
        try:
            rec = json.loads(rec_path.read_bytes().decode("utf-8"))
            if not isinstance(rec, dict):
                raise ValueError
        except (UnicodeDecodeError, ValueError):
            return f"{rec_path.name} is damaged"
        return mismatch(path, rec)

    def shard_done(self, shard_dir: Path, index: int) -> bool:
        why = self.shard_mismatch(shard_dir, index)
        if why is not None and why != "missing":
            log.warning("%s: %s; redoing it", self.shard_path(shard_dir, index), why)
        return why is None

    def merge_shards(self, shard_dir: Path, n_shards: int, out: Path) -> list[dict]:
        """Concatenates shards 0..n-1 in order into `out` (atomically) and returns the rows.
        Only verified shards are merged: anything else is an error, never a short file."""
        rows: list[dict] = []
        for i in range(n_shards):
            why = self.shard_mismatch(shard_dir, i)
            if why is not None:
                raise ReclaifError(f"{self.shard_path(shard_dir, i)}: {why}; not merged. Rerun "
                                   "the same command to redo the shard")
            rows.extend(read_jsonl(self.shard_path(shard_dir, i)))
        atomic_write_jsonl(out, rows)
        return rows
