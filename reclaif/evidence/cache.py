"""Fitted evidence models reused across runs, found by a hash of everything their fit reads.

A proof run spends minutes fitting SASRec per fold; a rerun on the same data and settings
would fit the same models again. An entry is keyed by a SHA-256 of the windows fitted on (ids,
users, histories, targets: which windows a fold model gets is the fold assignment, so it is in
the key through them), the items' text, the evidence settings that shape the fit, the seed and
the fitting code itself (the source of the modules below), so any changed input misses. An entry
is a directory of the model files plus `entry.json` (each file's SHA-256), published by renaming
a finished temporary directory: readers see all of it or none. An entry whose files do not
match their hashes, or that does not load, is removed and refitted, never trusted.

The directory: `evidence.cache_dir`, else $RECLAIF_EVIDENCE_CACHE, else $RECLAIF_CACHE/evidence
(default ~/.cache/reclaif/evidence); `off` turns reuse off.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

from reclaif.atomic import atomic_write_bytes, atomic_write_json, replace_dir_durably
from reclaif.config import EvidenceConfig
from reclaif.records import Example, Item

log = logging.getLogger(__name__)

# Bump to drop every entry at once (a fix whose effect the code hash cannot see, e.g. a
# dependency's); changes to the fitting modules below miss on their own.
CACHE_VERSION = 1
FIT_MODULES = ("reclaif.evidence.models", "reclaif.baselines.sasrec",
               "reclaif.baselines.transition", "reclaif.baselines.base")
ENTRY = "entry.json"
OFF = "off"


def cache_dir(cfg: EvidenceConfig) -> Path | None:
    """Where fitted evidence models are kept between runs; None when reuse is off."""
    chosen = cfg.cache_dir or os.environ.get("RECLAIF_EVIDENCE_CACHE", "")
    if chosen == OFF:
        return None
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("RECLAIF_CACHE") or Path.home() / ".cache" / "reclaif"
    return Path(base) / "evidence"


def _code_digest() -> str:
    h = hashlib.sha256()
    for name in FIT_MODULES:
        spec = find_spec(name)
        h.update(name.encode())
        h.update(Path(spec.origin).read_bytes() if spec and spec.origin else b"?")
    return h.hexdigest()


def items_digest(items: dict[str, Item]) -> str:
    """A hash of the catalog's text (titles and fields), computed once per build."""
    h = hashlib.sha256()
    for i in sorted(items):
        it = items[i]
        h.update(json.dumps([it.id, it.title, it.fields], sort_keys=True, default=str).encode())
    return h.hexdigest()


def fit_key(windows: Sequence[Example], items_hash: str, sources: Sequence[str],
            cfg: EvidenceConfig, seed: int) -> str:
    """The cache key of one fit: see the module docstring for what it covers."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "code": _code_digest(), "items": items_hash,
                         "sources": list(sources), "order": cfg.order,
                         "sasrec_epochs": cfg.sasrec_epochs,
                         "sasrec_max_seconds": cfg.sasrec_max_seconds, "seed": seed,
                         **({"device": cfg.device} if cfg.device != "cpu" else {})},
                        sort_keys=True).encode())
    for w in windows:
        h.update(json.dumps([w.id, w.user, w.task, w.context, w.candidates, w.labels],
                            sort_keys=True).encode())
    return h.hexdigest()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry(root: Path, key: str) -> Path:
    return root / key[:2] / key


def fetch(root: Path, key: str, into: Path) -> bool:
    """Copies entry `key` into directory `into` (fit.json last: a model directory with fit.json
    is complete) and returns True; False on a miss. A damaged entry is removed (False)."""
    entry = _entry(root, key)
    if not entry.is_dir():
        return False
    try:
        files = json.loads((entry / ENTRY).read_text(encoding="utf-8"))["files"]
        if not files or "fit.json" not in files or \
                any(_sha(entry / name) != digest for name, digest in files.items()):
            raise ValueError("a file does not match its hash")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        drop(root, key, f"damaged ({e})")
        return False
    into.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: n == "fit.json"):
        atomic_write_bytes(into / name, (entry / name).read_bytes())
    log.info("evidence: %s reused from %s", into.name, entry)
    return True


def publish(root: Path, key: str, files: Sequence[Path]) -> None:
    """Stores `files` (one fitted model's) as entry `key`; an entry already there is kept. A
    cache that cannot be written only costs the next run its reuse."""
    entry = _entry(root, key)
    if entry.is_dir():
        return
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    except OSError as e:
        log.warning("evidence cache %s: not written (%s)", root, e)
        return
    try:
        for f in files:
            shutil.copyfile(f, tmp / f.name)
        atomic_write_json(tmp / ENTRY, {"key": key, "files": {f.name: _sha(tmp / f.name)
                                                               for f in files}})
        replace_dir_durably(tmp, entry)
    except OSError as e:  # another run published the same key first, or the disk is full
        if not entry.is_dir():
            log.warning("evidence cache %s: not written (%s)", root, e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def drop(root: Path, key: str, why: str) -> None:
    """Removes entry `key` (damaged, or its models did not load) so the next fit replaces it."""
    entry = _entry(root, key)
    log.warning("evidence cache entry %s %s: refitting", entry, why)
    aside = entry.with_name(f".drop-{key}-{os.getpid()}")
    try:
        os.replace(entry, aside)  # gone for readers at once; then deleted
    except OSError:
        aside = entry
    shutil.rmtree(aside, ignore_errors=True)
