"""Rebuilds the bundled LastFM sample (reclaif/data/samples/lastfm/) from ../shared/data.

    python tests/make_sample.py [--data ../shared/data] [--out reclaif/data/samples/lastfm]

256 "train" examples drawn (seeded) from the LLaRA train rows, with their seeded candidates, and
128 "valid" examples drawn from the S-DPO validation prompts with their fixed 20 candidates. The
two releases come from disjoint users. items.jsonl holds only the artists they reference, with
their HetRec tags. Same seed → byte-identical files (tests/test_data_sample.py checks).
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from reclaif.data import lastfm
from reclaif.data.prepare import DEFINITIONS, referenced, table1, write_prepared

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_VALID = 256, 128


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
    items = referenced(examples, catalog)
    stats = {"dataset": "lastfm", "source": "LLaRA train.jsonl.gz + S-DPO lastfm-val.json",
             "task": "sequential", "domain": "music", **table1(examples, items),
             "examples": len(examples), "examples_per_split": {"train": N_TRAIN, "valid": N_VALID},
             "candidates_per_example": {"20": len(examples)}, "skipped": {}, "seed": seed,
             "limit": 0, "definitions": DEFINITIONS}
    return write_prepared(out, examples, items.values(), stats)


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
