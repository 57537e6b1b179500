"""Datasets → common `Example` and `Item` records (DESIGN.md). Nothing downstream knows a
dataset's file format: it calls `load_examples` and `load_items` on a prepared directory."""
from __future__ import annotations

import gzip
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from reclaif.atomic import read_jsonl
from reclaif.errors import DataError
from reclaif.records import Example, Item

SAMPLE_DIR = Path(__file__).parent / "samples" / "lastfm"


def resolve_data_dir(path: str | Path) -> Path:
    """'sample' means the bundled LastFM sample; anything else is a prepared directory."""
    return SAMPLE_DIR if str(path) == "sample" else Path(path)


def load_examples(path: str | Path, split: str | None = None) -> list[Example]:
    """Examples of a prepared directory (examples.jsonl or examples-*.jsonl shards) or file."""
    p = resolve_data_dir(path)
    files = [p] if p.is_file() else sorted(p.glob("examples*.jsonl"))
    if not files:
        raise DataError(f"{p}: no examples.jsonl (run `reclaif data prepare` first)")
    out = []
    for f in files:
        for n, row in enumerate(read_jsonl(f), 1):
            try:
                ex = Example.from_json(row)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise DataError(f"{f}:{n}: not an example record ({e!r})") from None
            if split is None or ex.split == split:
                out.append(ex)
    return out


def load_items(path: str | Path) -> dict[str, Item]:
    """The item catalog (items.jsonl) of a prepared directory: id → Item."""
    p = resolve_data_dir(path)
    f = p.parent / "items.jsonl" if p.is_file() else p / "items.jsonl"
    items = {}
    for n, row in enumerate(read_jsonl(f), 1):
        try:
            item = Item.from_json(row)
        except (KeyError, TypeError) as e:
            raise DataError(f"{f}:{n}: not an item record ({e!r})") from None
        items[item.id] = item
    return items


def check_held_out(train: list[Example], evaluation: list[Example], what: str = "training",
                   by_user: bool = True) -> None:
    """Asserts no evaluation example leaks into `what` input: the same id, the same
    (context, relevant items), or — with `by_user`, where the source has users — the same user.
    Beauty's official split is leave-last-out per user (the same users, later targets), so its
    callers pass by_user=False; the other checks still hold there."""
    def key(e: Example) -> tuple:
        ctx = e.context if isinstance(e.context, str) else tuple(e.context)
        return (e.task, ctx, tuple(sorted(e.relevant())))

    ids = {e.id for e in train}
    users = {e.user for e in train if e.user}
    keys = {key(e) for e in train}
    for e in evaluation:
        if e.id in ids:
            raise DataError(f"held-out violation: evaluation example {e.id!r} is in the {what} input")
        if by_user and e.user and e.user in users:
            raise DataError(f"held-out violation: user {e.user!r} of evaluation example {e.id!r} "
                            f"is also in the {what} input (splits must be by user)")
        if key(e) in keys:
            raise DataError(f"held-out violation: evaluation example {e.id!r} has the same context "
                            f"and labels as a {what} example")


def row_rng(seed: int, key: object) -> random.Random:
    """A generator for one row, derived from (seed, key) alone, so a row's sampled candidates do
    not depend on which rows came before it (streaming, --limit, shards all agree). Python seeds
    a str through SHA-512, which is stable across runs and platforms (unlike `hash`)."""
    return random.Random(f"{seed}:{key}")


def open_text(path: str | Path, encoding: str = "utf-8") -> TextIO:
    """Opens a plain or gzip-compressed text file; a missing one is a DataError naming it."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    if p.suffix == ".gz":
        return gzip.open(p, "rt", encoding=encoding, newline="")
    return open(p, encoding=encoding, newline="")


@dataclass
class Loaded:
    """What a dataset loader returns: examples, the item catalog they draw on (prepare keeps only
    the referenced items), and rows skipped by reason (reported in stats.json)."""

    examples: list[Example]
    items: dict[str, Item]
    skipped: dict[str, int] = field(default_factory=dict)
    # For catalogs too big to hold (ESCI listing text): given the needed item ids, yields those
    # items one by one from the source, so prepare can write them without a dict of them all.
    item_stream: Callable[[set[str]], Iterable[Item]] | None = None
