"""Datasets → common `Example` and `Item` records (docs/ARCHITECTURE.md, "Records and
interfaces"). Nothing downstream knows a dataset's file format: it calls `load_examples` and
`load_items` on a prepared directory."""
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

SAMPLES = Path(__file__).parent / "samples"
SAMPLE_DIR = SAMPLES / "lastfm"


def resolve_data_dir(path: str | Path) -> Path:
    """'sample' means the bundled LastFM sample, 'sample:NAME' the bundled sample NAME
    (lastfm, beauty); anything else is a prepared directory."""
    text = str(path)
    if text == "sample":
        return SAMPLE_DIR
    if text.startswith("sample:"):
        name = text.partition(":")[2]
        known = sorted(p.name for p in SAMPLES.iterdir() if p.is_dir())
        if name not in known:
            raise DataError(f"data path {text!r}: no bundled sample {name!r}; bundled: "
                            + ", ".join(f"sample:{k}" for k in known))
        return SAMPLES / name
    return Path(path)


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
    """The item catalog (items.jsonl) of a prepared directory: id → Item. An id repeated with
    other text is an error (a later row would silently replace the earlier item's title and
    fields); an exact repeat is harmless and kept once."""
    p = resolve_data_dir(path)
    f = p.parent / "items.jsonl" if p.is_file() else p / "items.jsonl"
    items: dict[str, Item] = {}
    first: dict[str, int] = {}
    for n, row in enumerate(read_jsonl(f), 1):
        try:
            item = Item.from_json(row)
        except (KeyError, TypeError) as e:
            raise DataError(f"{f}:{n}: not an item record ({e!r})") from None
        if item.id in first and items[item.id] != item:
            raise DataError(f"{f}: record {n}: item id {item.id!r} repeats record "
                            f"{first[item.id]} with other text; each item must appear once")
        if item.id in first:
            continue
        first[item.id] = n
        items[item.id] = item
    return items


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
