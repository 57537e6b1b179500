"""The interaction sequences collaborative models are fitted on, as next-item windows.

A prepared directory may hold `interactions.jsonl`: one row per user, `{"user", "items": [ids,
oldest first], "split"}` (the bundled sample carries every LLaRA training user's whole sequence).
Without it the training examples themselves are the windows (an LLaRA directory's train split
is every window already). Either way a window is an `Example` whose context is up to `max_len`
items and whose one label is the next item, so SASRec, the transition model and the held-out
check read them as they read any sequential example.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reclaif.atomic import read_jsonl
from reclaif.data import resolve_data_dir
from reclaif.errors import DataError
from reclaif.records import Example

INTERACTIONS_FILE = "interactions.jsonl"


def interactions_path(data_path: str | Path) -> Path | None:
    p = resolve_data_dir(data_path)
    f = (p.parent if p.is_file() else p) / INTERACTIONS_FILE
    return f if f.is_file() else None


def sequence_windows(user: str, items: Sequence[str], domain: str, max_len: int = 10,
                     split: str = "fit") -> list[Example]:
    """Every (up to `max_len` previous items → next item) window of one user's sequence."""
    return [Example(id=f"{user}#{t}", task="sequential", context=list(items[max(0, t - max_len):t]),
                    candidates=[items[t]], labels={items[t]: 1.0}, split=split, domain=domain,
                    user=user)
            for t in range(1, len(items))]


def fit_windows(data_path: str | Path, split: str, train: Sequence[Example],
                max_len: int = 10) -> list[Example]:
    """The windows of `split`'s interaction sequences, or `train` itself when the directory has
    no interactions file (retrieval examples have no sequences: an empty list)."""
    if train and train[0].task != "sequential":
        return []
    f = interactions_path(data_path)
    if f is None:
        return [ex for ex in train if ex.context]
    domain = train[0].domain if train else "music"
    out: list[Example] = []
    seen: set[str] = set()
    for n, row in enumerate(read_jsonl(f), 1):
        if not isinstance(row, dict) or not isinstance(row.get("items"), list) or "user" not in row:
            raise DataError(f"{f}:{n}: an interaction row is {{'user', 'items': [...], 'split'}}")
        if row.get("split", split) != split:
            continue
        user = str(row["user"])
        if user in seen:
            raise DataError(f"{f}:{n}: user {user!r} has a second row; give each user one "
                            "sequence")
        seen.add(user)
        out += sequence_windows(user, [str(i) for i in row["items"]], domain, max_len)
    return out
