"""Amazon Reviews 2023, All_Beauty (Hou et al. 2024) → sequential `Example`s with 10 candidates.

Source: the official benchmark CSV ("5core / last_out_w_his": user_id, parent_asin, rating,
timestamp, history = space-separated earlier parent_asins), plain or gz. As in the paper, the
context is the N = 10 most recent history items and the candidates are the target plus 9 items
sampled per row (seeded) from the metadata catalog, outside the user's history.
Item text: the metadata, either the 5-core items CSV (`details` is a Python-dict string) or the
official `meta_*.jsonl` (one JSON object per line; description and features are lists).
"""
from __future__ import annotations

import ast
import csv
import json
import math
import zlib
from pathlib import Path
from typing import Any

from reclaif.data import Loaded, open_text, row_rng
from reclaif.errors import DataError
from reclaif.records import Example, Item

HISTORY_LEN = 10
N_CANDIDATES = 10
SOURCE_COLUMNS = ("user_id", "parent_asin", "history")
# `details` keys that describe the package or the listing rather than the product: left out of
# the prompt text (they would only add noise and tokens).
NOISE_DETAILS = {"Package Dimensions", "UPC", "Product Dimensions", "Item model number",
                 "Manufacturer", "Is Discontinued By Manufacturer", "Item Dimensions LxWxH",
                 "Item Weight", "Country of Origin", "Date First Available", "Best Sellers Rank",
                 "Global Trade Identification Number", "ASIN"}


def _clean(value: Any) -> str:
    """A metadata value as prompt text: lists joined, NaN/None/'None' dropped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, list):
        return " ".join(_clean(v) for v in value if _clean(v))
    text = str(value).strip()
    return "" if text in ("None", "nan", "[]") else text


def _item(where: str, asin: str, title: Any, description: Any, price: Any, details: Any,
          features: Any = None) -> Item:
    if isinstance(details, str) and details.strip():
        try:
            details = ast.literal_eval(details)  # a Python-dict string: literal_eval, never eval
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise DataError(f"{where}: field 'details' is not a Python dict literal") from None
    if details in (None, "") or (isinstance(details, float) and math.isnan(details)):
        details = {}
    if not isinstance(details, dict):
        raise DataError(f"{where}: field 'details' must be a dict")
    fields = {}
    for key, value in details.items():
        text = _clean(value)
        if str(key) not in NOISE_DETAILS and text:
            fields[str(key).lower().replace(" ", "_")] = text
    for key, value in (("description", description), ("features", features), ("price", price)):
        text = _clean(value)
        if text:
            fields[key] = text
    title = _clean(title)
    if not title:
        raise DataError(f"{where}: item {asin!r} has no title")
    return Item(id=asin, title=title, fields=fields)


def _once(items: dict[str, Item], first: dict[str, str], item: Item, where: str) -> None:
    """Adds `item`; a repeated id with other text would silently replace the earlier item's
    text: an error instead (an exact repeat is harmless)."""
    if item.id in first and items[item.id] != item:
        raise DataError(f"{where}: parent_asin {item.id!r} repeats {first[item.id]} with other "
                        "text; each item must appear once")
    first.setdefault(item.id, "line " + where.rsplit(":", 1)[-1])
    items.setdefault(item.id, item)


def load_meta(path: str | Path) -> dict[str, Item]:
    """Item catalog from the 5-core items CSV or the official meta_*.jsonl(.gz)."""
    path = Path(path)
    items: dict[str, Item] = {}
    first: dict[str, str] = {}
    try:
        with open_text(path) as f:
            if ".jsonl" in path.name:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    where = f"{path}:{n}"
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{where}: not valid JSON ({e.msg})") from None
                    if not isinstance(obj, dict) or not isinstance(obj.get("parent_asin"), str):
                        raise DataError(f"{where}: missing field 'parent_asin'")
                    asin = obj["parent_asin"]
                    _once(items, first, _item(where, asin, obj.get("title"),
                                              obj.get("description"), obj.get("price"),
                                              obj.get("details"), obj.get("features")), where)
            else:
                reader = csv.reader(f)
                header = next(reader, None) or []
                for col in ("title", "parent_asin"):
                    if col not in header:
                        raise DataError(f"{path}:1: missing column {col!r}")
                pos = {c: i for i, c in enumerate(header)}
                for row in reader:
                    where = f"{path}:{reader.line_num}"
                    if len(row) != len(header):
                        raise DataError(f"{where}: {len(row)} fields, header has {len(header)}")
                    get = lambda c: row[pos[c]] if c in pos else None  # noqa: E731
                    asin = get("parent_asin").strip()
                    if not asin:
                        raise DataError(f"{where}: empty parent_asin")
                    _once(items, first, _item(where, asin, get("title"), get("description"),
                                              get("price"), get("details"), get("features")),
                                        where)
    except (UnicodeDecodeError, csv.Error, EOFError, OSError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise DataError(f"{path}: file not found") from None
        raise DataError(f"{path}: unreadable ({e})") from None
    if not items:
        raise DataError(f"{path}: no items")
    return items


def _split_from_name(path: Path) -> str:
    name = path.name.lower()
    for key, split in (("train", "train"), ("valid", "valid"), ("val", "valid"), ("test", "test")):
        if key in name:
            return split
    raise DataError(f"{path}: cannot tell the split from the file name; name the split (split)")


def _default_meta(source: Path) -> Path:
    found = sorted(source.parent.glob("meta_*.jsonl*")) + sorted(source.parent.glob("meta_*.csv"))
    if not found:
        raise DataError(f"{source}: no meta_*.jsonl or meta_*.csv beside it; give the item "
                        "metadata file (items)")
    return found[0]


def load(source: str | Path, items: str | Path | None = None, split: str | None = None,
         seed: int = 0, limit: int = 0) -> Loaded:
    """Benchmark CSV + metadata → Loaded. Rows with an empty history (each user's first) are
    skipped and counted; every history item and target must be in the metadata catalog."""
    source = Path(source)
    if not source.is_file():
        raise DataError(f"{source}: file not found")
    split = split or _split_from_name(source)
    catalog = load_meta(items if items is not None else _default_meta(source))
    pool = sorted(catalog)
    out: list[Example] = []
    skipped = {"empty_history": 0}
    try:
        with open_text(source) as f:
            reader = csv.reader(f)
            header = next(reader, None) or []
            for col in SOURCE_COLUMNS:
                if col not in header:
                    raise DataError(f"{source}:1: missing column {col!r}")
            pos = {c: i for i, c in enumerate(header)}
            for row in reader:
                where = f"{source}:{reader.line_num}"
                if len(row) != len(header):
                    raise DataError(f"{where}: {len(row)} fields, header has {len(header)}")
                user, target = row[pos["user_id"]].strip(), row[pos["parent_asin"]].strip()
                if not user or not target:
                    raise DataError(f"{where}: empty user_id or parent_asin")
                full = row[pos["history"]].split()
                if not full:
                    skipped["empty_history"] += 1
                    continue
                for asin, key in [(a, "history") for a in full[-HISTORY_LEN:]] + [(target,
                                                                                   "parent_asin")]:
                    if asin not in catalog:
                        raise DataError(f"{where}: {key} item {asin!r} is not in the metadata")
                excluded = set(full) | {target}
                if len(pool) - len(excluded & catalog.keys()) < N_CANDIDATES - 1:
                    raise DataError(f"{where}: candidate set too small: {len(pool)} catalog "
                                    f"items, need {N_CANDIDATES - 1} outside the history")
                rng = row_rng(seed, f"beauty-{split}:{reader.line_num}")
                picked = rng.sample(pool, min(len(pool), N_CANDIDATES - 1 + len(excluded)))
                cands = [a for a in picked if a not in excluded][:N_CANDIDATES - 1] + [target]
                rng.shuffle(cands)
                out.append(Example(id=f"beauty:{split}:{reader.line_num}", task="sequential",
                                   context=full[-HISTORY_LEN:], candidates=cands,
                                   labels={target: 1.0}, split=split, domain="beauty",
                                   user=user))
                if limit and len(out) >= limit:
                    break
    except (UnicodeDecodeError, csv.Error, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{source}: unreadable ({e})") from None
    return Loaded(examples=out, items=catalog, skipped=skipped)
