"""Datasets → common `Example` and `Item` records (DESIGN.md). Nothing downstream knows a
dataset's file format: it calls `load_examples` and `load_items` on a prepared directory."""
from __future__ import annotations

from pathlib import Path

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
