"""Copies a prepared LastFM directory with its items' tags rebuilt from EVERY HetRec user's
tagging (the leaky tags: they include each evaluated user's own tags on their target), for the
clean/leaky side-by-side of docs/RESULTS.md only. No run's config can reach these tags.

    python tests/leaky_tags.py --src sample --out /tmp/lastfm-leaky [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from reclaif.atomic import atomic_write_jsonl
from reclaif.data import lastfm, load_items, resolve_data_dir

REPO = Path(__file__).resolve().parents[1]


def write_leaky(src: str, out: Path, data: Path) -> int:
    """`src`'s files in `out`, items.jsonl with all-user tags; returns the items rewritten."""
    src_dir = resolve_data_dir(src)
    shutil.copytree(src_dir, out, dirs_exist_ok=True)
    names = lastfm.read_id2name(data / "lastfm" / "llara" / "id2name.txt")
    leaky = lastfm.load_hetrec_items(data / "lastfm" / lastfm.HETREC_DIRNAME, names, None,
                                     all_users=True)
    items = load_items(src_dir)
    atomic_write_jsonl(out / "items.jsonl", [leaky[i].to_json() for i in items])
    return len(items)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", required=True, help="prepared LastFM directory, or 'sample'")
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    a = p.parse_args(argv)
    print(write_leaky(a.src, Path(a.out), Path(a.data)), "items rewritten with all-user tags")
    return 0


if __name__ == "__main__":
    sys.exit(main())
