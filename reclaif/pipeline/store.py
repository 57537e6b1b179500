"""The run directory (docs/ARCHITECTURE.md, "Run directory"): frozen config, a manifest of
finished phases, shard files.

A phase is done only when its manifest entry is written, and every file is written to a
temporary name and renamed (reclaif.atomic), so a SIGKILL at any moment leaves either the old
state or the new one. Shards are the unit of resume inside a phase: a shard file that exists is
complete, and a rerun skips it, so no record is lost or produced twice.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from reclaif.atomic import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from reclaif.config import RunConfig, dump_config, from_dict, to_dict
from reclaif.errors import ConfigError, ReclaifError


def file_hash(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix[:-1]}: {a!r} → {b!r}"]


class RunStore:
    """One run directory. All paths a phase reads or writes come from here."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"

    # config -----------------------------------------------------------------------------
    def freeze_config(self, cfg: RunConfig) -> RunConfig:
        """Writes config.yaml on the first start; later starts must use the same config."""
        path = self.root / "config.yaml"
        if path.exists():
            frozen = self.load_config()
            changed = _diff(to_dict(frozen), to_dict(cfg))
            if changed:
                raise ConfigError(f"{path}: this run was started with another config; "
                                  f"use a new --run-dir or the same settings. Differences: "
                                  + "; ".join(changed[:8]))
            return frozen
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, dump_config(cfg))
        return cfg

    def load_config(self) -> RunConfig:
        path = self.root / "config.yaml"
        if not path.exists():
            raise ReclaifError(f"{self.root}: not a run directory (no config.yaml)")
        return from_dict(RunConfig, yaml.safe_load(path.read_text(encoding="utf-8")))

    # manifest ---------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"phases": {}}
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def is_done(self, phase: str) -> bool:
        return self.manifest()["phases"].get(phase, {}).get("status") == "done"

    def mark_done(self, phase: str, outputs: list[Path] | None = None, **info: Any) -> None:
        m = self.manifest()
        entry: dict[str, Any] = {"status": "done", **info}
        if outputs:
            entry["hashes"] = {str(p.relative_to(self.root)): file_hash(p)
                               for p in outputs if p.is_file()}
        m["phases"][phase] = entry
        atomic_write_json(self.manifest_path, m)

    # paths ------------------------------------------------------------------------------
    def phase_dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def iter_dir(self, iteration: int) -> Path:
        return self.phase_dir(f"iter-{iteration:03d}")

    def checkpoint(self, stage: str) -> Path:
        """'sft' → sft/checkpoint; 'iter-002' → iter-002/checkpoint."""
        return self.root / stage / "checkpoint"

    # shards -----------------------------------------------------------------------------
    @staticmethod
    def shard_path(shard_dir: Path, index: int) -> Path:
        return shard_dir / f"shard-{index:05d}.jsonl"

    def write_shard(self, shard_dir: Path, index: int, rows: list[dict]) -> None:
        atomic_write_jsonl(self.shard_path(shard_dir, index), rows)

    def shard_done(self, shard_dir: Path, index: int) -> bool:
        return self.shard_path(shard_dir, index).exists()

    def merge_shards(self, shard_dir: Path, n_shards: int, out: Path) -> list[dict]:
        """Concatenates shards 0..n-1 in order into `out` (atomically) and returns the rows."""
        rows: list[dict] = []
        for i in range(n_shards):
            rows.extend(read_jsonl(self.shard_path(shard_dir, i)))
        atomic_write_jsonl(out, rows)
        return rows
