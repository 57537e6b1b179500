"""Atomic file writes: a file is either the old one or the whole new one, never half.

Every writer in the project goes through these, so a crash, a SIGKILL or a full disk leaves
the previous state intact (write to a temporary name in the same directory, fsync, rename,
fsync the directory: without the last, a power loss can keep the rename of a manifest that
says "done" and lose the rename of the file it vouches for).

JSON documents (atomic_write_json: eval.json, manifests, stats) are written strictly: NaN and
Infinity are not JSON (other readers reject them), so a non-finite float is written as null.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from reclaif.errors import DataError, ReclaifError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(e, OSError) and e.errno is not None:
            # write()/fsync() on a full disk name no file, mkstemp and rename name the
            # temporary one: the user should read the file they asked for.
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    fsync_dir(path.parent)


def fsync_dir(path: str | os.PathLike) -> None:
    """Makes the renames inside directory `path` durable (a no-op where directories cannot be
    opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and /proc-like mounts) refuse fsync on a directory
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsyncs every file under directory `path`, then each directory (deepest first): what a
    writer that cannot fsync itself (safetensors, save_pretrained) wrote is on disk before the
    rename that publishes the directory."""
    root = Path(path)
    for dirpath, _, names in os.walk(root, topdown=False):
        for name in names:
            f = Path(dirpath) / name
            if f.is_file() and not f.is_symlink():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                except OSError as e:  # EIO/ENOSPC on write-back: name the file
                    raise OSError(e.errno, e.strerror, str(f)) from None
                finally:
                    os.close(fd)
        fsync_dir(dirpath)


def replace_dir_durably(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Renames a finished directory `tmp` to `target` (none there: the caller moves an old one
    aside) so that a power loss keeps either no `target` or the whole one: contents and tmp
    fsynced first, the parent after the rename."""
    fsync_tree(tmp)
    os.replace(tmp, target)
    fsync_dir(Path(target).parent)


def finite_json(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, ±Infinity) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def dumps(obj: Any, **kw: Any) -> str:
    """json.dumps that never writes NaN or Infinity."""
    return json.dumps(finite_json(obj), ensure_ascii=False, allow_nan=False, **kw)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """Writes one JSON object per line; returns the number of rows."""
    # Rows keep Python's NaN/Infinity (reference log-probs may hold -Infinity and must read
    # back as floats); only the JSON documents people and other tools read are strict.
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line; a malformed or non-UTF-8 line
    raises DataError naming file and line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{n}: not UTF-8 (byte 0x{raw[e.start]:02x} at column "
                                f"{e.start + 1}); the file must be UTF-8 JSON lines") from None
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None


def read_json(path: str | os.PathLike) -> Any:
    """A JSON document this project wrote (manifest, metrics, a checkpoint's meta); damaged
    (cut by a crash or a full disk, edited) is one ReclaifError naming it, not a traceback."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = (f" (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError)
                 else "")
        raise ReclaifError(f"{path}: damaged, not UTF-8 JSON{where}; restore it from a "
                           f"backup, or delete it to redo what it recorded (verified "
                           f"shards are reused)") from None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a JSONL file (see `iter_jsonl` for its errors)."""
    return [row for _, row in iter_jsonl(path)]
