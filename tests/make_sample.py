"""Rebuilds the bundled LastFM sample (reclaif/data/samples/lastfm/) from ../shared/data.

    python tests/make_sample.py [--data ../shared/data] [--out reclaif/data/samples/lastfm]

512 "train" examples drawn (seeded) from the LLaRA train rows, with their seeded candidates, and
320 "valid" examples drawn from the S-DPO validation prompts with their fixed 20 candidates. The
two releases come from disjoint users. interactions.jsonl holds every LLaRA training user's whole
listening sequence (what the evidence models are fitted on: reclaif/evidence). items.jsonl holds
the artists the examples and sequences reference, with their HetRec tags. Same seed →
byte-identical files (tests/test_data_sample.py checks).
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from reclaif.atomic import atomic_write_jsonl
from reclaif.data import lastfm, open_text
from reclaif.data.prepare import DEFINITIONS, referenced, table1, write_prepared

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_VALID = 512, 320


def make_sample(data: Path, out: Path, seed: int = 0) -> dict:
    """Writes the sample into `out`; returns its stats."""
    llara, sdpo = data / "lastfm" / "llara", data / "lastfm" / "sdpo"
    names = lastfm.read_id2name(llara / "id2name.txt")
    train, _ = lastfm.load_llara(llara / "train.jsonl.gz", names, "train", seed)
    valid = lastfm.load_sdpo(sdpo / "lastfm-val.json", names, "valid")
    rng = random.Random(seed)
    # Keep file order inside each split (sorted indices) so a diff of two samples reads well.
    examples = ([train[i] for i in sorted(rng.sample(range(len(train)), N_TRAIN))]
                + [valid[i] for i in sorted(rng.sample(range(len(valid)), N_VALID))])
    catalog = lastfm.load_hetrec_items(data / "lastfm" / lastfm.HETREC_DIRNAME, names)
    sequences = llara_sequences(llara / "train.jsonl.gz", "train")
    items = referenced(examples, catalog)
    for row in sequences:
        items.update((i, catalog[i]) for i in row["items"] if i in catalog and i not in items)
    stats = {"dataset": "lastfm", "source": "LLaRA train.jsonl.gz + S-DPO lastfm-val.json",
             "task": "sequential", "domain": "music", **table1(examples, items),
             "examples": len(examples), "examples_per_split": {"train": N_TRAIN, "valid": N_VALID},
             "candidates_per_example": {"20": len(examples)}, "skipped": {}, "seed": seed,
             "limit": 0, "definitions": DEFINITIONS}
    stats = write_prepared(out, examples, items.values(), stats)
    atomic_write_jsonl(out / "interactions.jsonl", sequences)
    return stats


def llara_sequences(path: Path, split: str) -> list[dict]:
    """Each LLaRA user's whole sequence: a user starts at a row with an empty history (as
    `lastfm.load_llara` numbers them) and every row adds its next_id, so the rows are exactly
    the sliding windows of these sequences."""
    import json

    rows: list[dict] = []
    with open_text(path) as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if not row["history_ids"]:
                rows.append({"user": f"llara-{split}-u{len(rows)}", "items": [], "split": split})
            rows[-1]["items"].append(str(row["next_id"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default=str(REPO / "reclaif" / "data" / "samples" / "lastfm"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(make_sample(Path(a.data), Path(a.out), a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
