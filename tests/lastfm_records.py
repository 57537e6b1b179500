"""Test records built from the real S-DPO LastFM validation prompts (artist names as ids).

Used until the bundled sample exists; each row becomes a sequential Example whose candidates
are the 20 names in file order and whose label is the true next artist.
"""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from reclaif.records import Example, Item


@cache
def _rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def lastfm_examples(data: Path, n: int = 20) -> tuple[list[Example], dict[str, Item]]:
    rows = _rows(str(data / "lastfm" / "sdpo" / "lastfm-val.json"))[:n]
    examples, items = [], {}
    for k, row in enumerate(rows):
        history = row["historyList"].split("::")
        examples.append(Example(id=f"lastfm-val-{k}", task="sequential", context=history,
                                candidates=list(row["itemList"]),
                                labels={row["trueSelection"]: 1.0}, split="valid",
                                domain="music"))
        for name in history + list(row["itemList"]):
            items.setdefault(name, Item(id=name, title=name))
    return examples, items
