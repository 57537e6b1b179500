"""`reclaif data prepare|stats`: raw dataset files → a prepared directory, and its Table-1 counts.

A prepared directory holds examples.jsonl (or examples-00000.jsonl ... with a shard size),
items.jsonl (only the items some example references) and stats.json. Everything is written
into a temporary directory beside the output directory and moved in at the end, so a failure
(a DataError included) leaves the output directory as it was.

Table-1 counts (the paper's "#User, #Item, #Interactions"), as stats.json defines them:
- users: distinct `Example.user`; an example without a user (S-DPO prompts, ESCI queries)
  counts as one user, so for ESCI it is the number of queries, as in the paper.
- items: distinct items in items.jsonl, i.e. referenced by some example (context,
  candidates or labels).
- interactions: sequential tasks: distinct (user, item) events among contexts and targets
  (a user's rows repeat their history, counted once); examples without a user add
  len(context) + 1. Retrieval: judged (query, product) pairs among the candidates.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence, Sized
from pathlib import Path
from typing import Any

from reclaif.atomic import atomic_write_json, fsync_dir
from reclaif.config import DataConfig, choices
from reclaif.data import Loaded, beauty, lastfm
from reclaif.errors import DataError
from reclaif.records import Example, Item

log = logging.getLogger(__name__)
DATASETS = choices(DataConfig, "dataset")
DEFINITIONS = {
    "users": "distinct Example.user; an example without a user (query or prompt) counts as one",
    "items": "distinct items referenced by some example (items.jsonl)",
    "interactions": "sequential: distinct (user, item) events in contexts and targets "
                    "(len(context)+1 per example without a user); retrieval: judged "
                    "(query, product) pairs among the candidates",
}


def load(dataset: str, source: str | Path, items: str | Path | None = None,
         id2name: str | Path | None = None, split: str | None = None, seed: int = 0,
         limit: int = 0) -> Loaded:
    """Runs the dataset's loader (an `if` per dataset: three, known, each with its own args)."""
    if dataset == "lastfm":
        return lastfm.load(source, items, id2name, split, seed, limit)
    if dataset == "beauty":
        return beauty.load(source, items, split, seed, limit)
    if dataset == "esci":
        from reclaif.data import esci  # pyarrow: only to prepare ESCI

        return esci.load(source, items, split, seed, limit, stream_items=True)
    raise DataError(f"dataset {dataset!r}: expected one of {', '.join(DATASETS)}")


def referenced_ids(examples: Sequence[Example]) -> dict[str, None]:
    """Item ids some example uses (context, candidates, labels), in first-use order."""
    out: dict[str, None] = {}
    for ex in examples:
        if ex.task == "sequential":
            out.update(dict.fromkeys(ex.context))
        out.update(dict.fromkeys(ex.candidates))
        out.update(dict.fromkeys(ex.labels))
    return out


def referenced(examples: Sequence[Example], catalog: dict[str, Item]) -> dict[str, Item]:
    """The catalog entries some example uses, in first-use order; a missing one is an error."""
    out: dict[str, Item] = {}
    for iid in referenced_ids(examples):
        if iid not in catalog:
            raise DataError(f"item {iid!r} is used by an example but not in the item catalog")
        out[iid] = catalog[iid]
    return out


def table1(examples: Sequence[Example], items: Sized) -> dict[str, int]:
    """users, items, interactions as the module docstring defines them."""
    users: set[str] = set()
    events: set[tuple[str, str]] = set()
    no_user = loose = 0
    for ex in examples:
        if ex.user is None:
            no_user += 1
        else:
            users.add(ex.user)
        if ex.task == "retrieval":
            events.update((ex.id, c) for c in ex.candidates if c in ex.labels)
        elif ex.user is None:
            loose += len(ex.context) + len(ex.relevant())
        else:
            events.update((ex.user, i) for i in list(ex.context) + sorted(ex.relevant()))
    return {"users": len(users) + no_user, "items": len(items),
            "interactions": len(events) + loose}


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Streams rows to `path` (inside the temporary directory: the rename is the commit)."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n


def _previous_files(out: Path) -> list[str]:
    """The example files an earlier prepare wrote into `out` (its stats.json lists them)."""
    try:
        names = json.loads((out / "stats.json").read_text(encoding="utf-8"))["example_files"]
        return [n for n in names if isinstance(n, str) and "/" not in n and n.startswith("examples")]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def write_prepared(out: str | Path, examples: Sequence[Example], items: Iterable[Item],
                   stats: dict[str, Any], shard_size: int = 0) -> dict[str, Any]:
    """Writes examples, items and stats into `out`, all or nothing (see module docstring).

    `items` may be a stream (ESCI): they are written as they come, never all held; stats gets
    the number written as "items". Returns the stats as written.

    Into an existing `out`, only files an earlier prepare wrote are replaced or removed (its
    stats.json names them); an `examples*.jsonl` it did not write is never deleted: it would be
    read as part of the dataset, so it is an error to leave it there. The temporary directory
    is made inside an existing `out` (beside a new one), so every rename stays on one
    filesystem even when `out` is a mount point.
    """
    if not str(out).strip():
        raise DataError("out: empty; give the directory to write, e.g. data/lastfm-valid")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    if out.is_dir():
        ours = set(_previous_files(out))
        foreign = sorted(p.name for p in out.glob("examples*.jsonl") if p.name not in ours)
        if foreign:
            raise DataError(f"{out}: holds {', '.join(foreign[:3])}, which prepare did not "
                            "write and which would be read as part of this dataset; move it "
                            "away or choose another output directory")
        tmp_parent = out
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_parent = out.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name or 'out'}.", suffix=".tmp", dir=tmp_parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        size = shard_size if shard_size > 0 else max(len(examples), 1)
        names = []
        for k, start in enumerate(range(0, max(len(examples), 1), size)):
            names.append(f"examples-{k:05d}.jsonl" if shard_size > 0 else "examples.jsonl")
            _write_jsonl(tmp / names[-1], (ex.to_json() for ex in examples[start:start + size]))
        count = _write_jsonl(tmp / "items.jsonl", (it.to_json() for it in items))
        stats = {**stats, "items": count, "example_files": names}
        atomic_write_json(tmp / "stats.json", stats)
        # mkstemp/mkdtemp make private files; a dataset directory is for everyone to read.
        for name in names + ["items.jsonl", "stats.json"]:
            os.chmod(tmp / name, 0o666 & ~umask)
        os.chmod(tmp, 0o777 & ~umask)
        if tmp_parent != out:
            os.replace(tmp, out)
            fsync_dir(out.parent)
            return stats
        # Old shards of ours that the new set does not overwrite would be read as part of it.
        stale = [out / n for n in _previous_files(out) if n not in names]
        for name in names + ["items.jsonl", "stats.json"]:
            os.replace(tmp / name, out / name)
        for p in stale:
            p.unlink(missing_ok=True)
        fsync_dir(out)
        return stats
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare(dataset: str, source: str | Path, out: str | Path, items: str | Path | None = None,
            id2name: str | Path | None = None, split: str | None = None, seed: int = 0,
            limit: int = 0, shard_size: int = 0) -> dict[str, Any]:
    """Loads one dataset file, writes the prepared directory, returns its stats."""
    if limit < 0:
        raise DataError(f"limit {limit}: must be 0 (all examples) or a positive count")
    if shard_size < 0:
        raise DataError(f"shard_size {shard_size}: must be 0 (one file) or a positive count")
    if not str(out).strip():
        raise DataError("out: empty; give the directory to write, e.g. data/lastfm-valid")
    start = time.perf_counter()
    loaded = load(dataset, source, items, id2name, split, seed, limit)
    return write_loaded(loaded, dataset, source, out, seed, limit, shard_size, start)


def write_loaded(loaded: Loaded, dataset: str, source: str | Path, out: str | Path,
                 seed: int = 0, limit: int = 0, shard_size: int = 0,
                 start: float | None = None) -> dict[str, Any]:
    """Writes what a loader returned as a prepared directory with its stats (also used by
    scripts that build examples another way, e.g. tests/make_esci_sample_sets.py)."""
    start = time.perf_counter() if start is None else start
    if not loaded.examples:
        raise DataError(f"{source}: no examples (skipped: {loaded.skipped})")
    if loaded.item_stream is not None:
        needed = referenced_ids(loaded.examples)
        used: Iterable[Item] = loaded.item_stream(set(needed))
    else:
        needed = referenced(loaded.examples, loaded.items)
        used = needed.values()
    ex0 = loaded.examples[0]
    stats = {
        "dataset": dataset, "source": str(source), "task": ex0.task, "domain": ex0.domain,
        **table1(loaded.examples, needed),
        "examples": len(loaded.examples),
        "examples_per_split": dict(sorted(Counter(e.split for e in loaded.examples).items())),
        "candidates_per_example": dict(sorted(Counter(len(e.candidates)
                                                      for e in loaded.examples).items())),
        "skipped": loaded.skipped, "seed": seed, "limit": limit,
        "definitions": DEFINITIONS,
    }
    stats = write_prepared(out, loaded.examples, used, stats, shard_size)
    stats["seconds"] = round(time.perf_counter() - start, 2)
    log.info("%s → %s: %d examples, %d items in %.1f s", source, out, stats["examples"],
             stats["items"], stats["seconds"])
    return stats


def read_stats(path: str | Path) -> dict[str, Any]:
    f = Path(path) / "stats.json"
    if not f.is_file():
        raise DataError(f"{f}: file not found (run `reclaif data prepare` first)")
    try:
        stats = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{f}: not valid JSON ({e})") from None
    for key in ("users", "items", "interactions", "examples"):
        if key not in stats:
            raise DataError(f"{f}: missing key {key!r}")
    return stats


def format_table(rows: Sequence[tuple[str | Path, dict[str, Any]]]) -> str:
    """A markdown table in the layout of the paper's Table 1, plus splits and skipped rows."""
    head = ["directory", "dataset", "task", "#users", "#items", "#interactions", "examples",
            "per split", "skipped"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d, s in rows:
        splits = ", ".join(f"{k} {v:,}" for k, v in s.get("examples_per_split", {}).items())
        skipped = ", ".join(f"{k} {v:,}" for k, v in s.get("skipped", {}).items() if v) or "-"
        cells = [str(d), s.get("dataset", "?"), s.get("task", "?"), f"{s['users']:,}",
                 f"{s['items']:,}", f"{s['interactions']:,}", f"{s['examples']:,}", splits,
                 skipped]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
