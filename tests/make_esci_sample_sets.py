"""Retrieval candidate sets from the real joined ESCI rows, for the ESCI table in docs/RESULTS.md (the
paper's Table 2 layout) while the official release is not at hand.

    python tests/make_esci_sample_sets.py OUT_DIR [--source tests/data/esci/esci_sample200.csv.gz]
        [--candidates 15] [--seed 0]

`esci_sample200.csv` holds one judged product per real US query, so the loader finds no
candidate set in it. Here every query whose product is Exact gets that product plus
`candidates - 1` products of other queries, drawn per query (seeded), shuffled; labels: the
Exact product 1.0. The drawn products are unjudged for this query and taken as irrelevant, so
a score is a lower bound wherever another query's product would also fit. This is not the
paper's setup (10 Exact + 5 others per query): with one relevant product, Prec@5 is at most
0.2. Every example is an evaluation example (split 'valid'): nothing here trains on ESCI.
Rows are read and product text is built by the ESCI loader's own readers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reclaif.data import Loaded, row_rng
from reclaif.data.esci import LABEL_CODES, _read_judgments, iter_products
from reclaif.data.prepare import write_loaded
from reclaif.records import Example

# the whole esci_sample200.csv of ../shared/data, gzipped (tests/data/SOURCE.md)
DEFAULT_SOURCE = Path(__file__).resolve().parent / "data" / "esci" / "esci_sample200.csv.gz"


def sample_sets(source: Path, candidates: int = 15, seed: int = 0) -> Loaded:
    """The Loaded examples and products described in the module docstring."""
    queries, pids = _read_judgments(source)
    exact = LABEL_CODES["Exact"]
    examples, skipped = [], {"not_exact": 0}
    for qid, (query, idxs, codes) in queries.items():
        own = {pids[i] for i, c in zip(idxs, codes) if c == exact}
        if len(own) != 1:
            skipped["not_exact"] += 1
            continue
        target = own.pop()
        others = sorted(set(pids) - {pids[i] for i in idxs})
        rng = row_rng(seed, f"esci-sample:{qid}")
        cands = rng.sample(others, candidates - 1) + [target]
        rng.shuffle(cands)
        examples.append(Example(id=f"esci-sample:{qid}", task="retrieval", context=query,
                                candidates=cands, labels={target: 1.0}, split="valid",
                                domain="product_search"))
    needed = {c for ex in examples for c in ex.candidates}
    items = {it.id: it for it in iter_products(source, needed)}
    return Loaded(examples=examples, items=items, skipped=skipped)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    ap.add_argument("--candidates", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    stats = write_loaded(sample_sets(args.source, args.candidates, args.seed),
                         "esci-sample", args.source, args.out, args.seed)
    print(f"{args.out}: {stats['examples']} examples, {stats['items']} products "
          f"(skipped: {stats['skipped']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
