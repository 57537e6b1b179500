"""Rebuilds the bundled samples (reclaif/data/samples/lastfm/ and beauty/) from ../shared/data.

    python tests/make_sample.py [--dataset lastfm|beauty] [--data ../shared/data] [--out DIR]
                                [--train N] [--valid N]

512 "train" examples drawn (seeded) from the LLaRA train rows, with their seeded candidates, and
320 "valid" examples drawn from the S-DPO validation prompts with their fixed 20 candidates. The
two releases come from disjoint users. interactions.jsonl holds every LLaRA training user's whole
listening sequence (what the evidence models are fitted on: reclaif/evidence). items.jsonl holds
the artists the examples and sequences reference, with their clean HetRec tags (training users'
tagging only; stats.json "tags" says how much was kept). Same seed →
byte-identical files (tests/test_data_sample.py checks). `--train N --valid 0` makes the GPU
proof's data the same way: N training rows and the whole validation split (scripts/gpu_proof.sh).

Beauty (`data.path: sample:beauty`): the benchmark's whole 5-core layout, both splits, as
`reclaif data prepare` makes them (train 1,776 examples, valid 253; 10 seeded candidates each),
with the items they reference; its training examples are the sliding windows the evidence models
are fitted on (no interactions file). tests/data/beauty holds the same three source files.
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from pathlib import Path

from reclaif.atomic import atomic_write_jsonl
from reclaif.data import beauty, lastfm, open_text
from reclaif.data.prepare import DEFINITIONS, referenced, table1, write_prepared

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_VALID = 512, 320


def make_sample(data: Path, out: Path, seed: int = 0, n_train: int = N_TRAIN,
                n_valid: int = N_VALID) -> dict:
    """Writes the sample into `out`; returns its stats. n_train/n_valid: rows drawn from each
    release (0: all of it; scripts/gpu_proof.sh takes the whole validation split)."""
    llara, sdpo = data / "lastfm" / "llara", data / "lastfm" / "sdpo"
    names = lastfm.read_id2name(llara / "id2name.txt")
    train, _ = lastfm.load_llara(llara / "train.jsonl.gz", names, "train", seed)
    valid = lastfm.load_sdpo(sdpo / "lastfm-val.json", names, "valid")
    rng = random.Random(seed)

    def draw(rows: list, n: int) -> list:
        if n > len(rows):
            raise SystemExit(f"{data}: {n} rows asked of a release of {len(rows)}")
        # Keep file order (sorted indices) so a diff of two samples reads well.
        return rows if not n else [rows[i] for i in sorted(rng.sample(range(len(rows)), n))]

    drawn_train, drawn_valid = draw(train, n_train), draw(valid, n_valid)
    examples = drawn_train + drawn_valid
    # Clean tags: only LLaRA training users' tagging (docs/ARCHITECTURE.md, "Clean tags")
    catalog, provenance = lastfm.hetrec_catalog(data / "lastfm" / lastfm.HETREC_DIRNAME, names,
                                                llara / lastfm.TRAIN_FILE)
    sequences = llara_sequences(llara / "train.jsonl.gz", "train")
    items = referenced(examples, catalog)
    for row in sequences:
        items.update((i, catalog[i]) for i in row["items"] if i in catalog and i not in items)
    stats = {"dataset": "lastfm", "source": "LLaRA train.jsonl.gz + S-DPO lastfm-val.json",
             "task": "sequential", "domain": "music", **table1(examples, items),
             "examples": len(examples), "examples_per_split": {"train": len(drawn_train), "valid": len(drawn_valid)},
             "candidates_per_example": {"20": len(examples)}, "skipped": {}, "seed": seed,
             "limit": 0, "definitions": DEFINITIONS, "tags": dataclasses.asdict(provenance)}
    stats = write_prepared(out, examples, items.values(), stats)
    atomic_write_jsonl(out / "interactions.jsonl", sequences)
    return stats


def make_beauty_sample(data: Path, out: Path, seed: int = 0) -> dict:
    """Writes the Beauty sample (both splits of the 5-core benchmark) into `out`."""
    src = data / "beauty"
    meta = src / "meta_All_Beauty_5core_items.csv"
    train = beauty.load(src / "All_Beauty.train.csv.gz", meta, "train", seed)
    valid = beauty.load(src / "All_Beauty.valid.csv.gz", meta, "valid", seed)
    examples = train.examples + valid.examples
    items = referenced(examples, train.items)
    stats = {"dataset": "beauty", "source": "All_Beauty.{train,valid}.csv.gz (5-core, "
             "last_out_w_his) + meta_All_Beauty_5core_items.csv", "task": "sequential",
             "domain": "beauty", **table1(examples, items), "examples": len(examples),
             "examples_per_split": {"train": len(train.examples), "valid": len(valid.examples)},
             "candidates_per_example": {"10": len(examples)},
             "skipped": {"empty_history": train.skipped["empty_history"]
                         + valid.skipped["empty_history"]},
             "seed": seed, "limit": 0, "definitions": DEFINITIONS}
    return write_prepared(out, examples, items.values(), stats)


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
    p.add_argument("--dataset", choices=["lastfm", "beauty"], default="lastfm")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default="", help="default: reclaif/data/samples/DATASET")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=N_TRAIN,
                   help="lastfm: training rows drawn (0: all 49,824)")
    p.add_argument("--valid", type=int, default=N_VALID,
                   help="lastfm: validation prompts drawn (0: all 2,767)")
    a = p.parse_args(argv)
    out = Path(a.out or REPO / "reclaif" / "data" / "samples" / a.dataset)
    if a.dataset == "beauty":
        print(make_beauty_sample(Path(a.data), out, a.seed))
    else:
        print(make_sample(Path(a.data), out, a.seed, a.train, a.valid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
