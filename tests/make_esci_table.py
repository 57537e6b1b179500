"""Writes a synthetic ESCI pair in the official schema, for the scale measurement.

    python tests/make_esci_table.py OUT_DIR [--rows 1000000] [--seed 0]

OUT_DIR/shopping_queries_dataset_examples.parquet (example_id, query, query_id, product_id,
product_locale, esci_label, small_version, large_version, split) and
OUT_DIR/shopping_queries_dataset_products.parquet (product_id, product_locale, product_title,
product_description, product_bullet_point, product_brand, product_color). Shapes follow the
release: ~20 judged products per query (5-40), labels E 65% / S 22% / C 3% / I 10%, locales
us 60% / es 20% / jp 20%, text lengths of real listings (title ~100, bullets ~600, description
~800 characters), products shared between queries. Written in row groups, never all at once.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CHUNK = 200_000


def _text_source(rng: np.random.Generator) -> str:
    """A long run of word-like tokens to slice listing texts from (cheap at any size)."""
    syll = np.array(["ka", "lo", "mi", "tre", "zen", "po", "ra", "vi", "sol", "den", "qu", "ex"])
    words = ["".join(rng.choice(syll, rng.integers(1, 4))) for _ in range(5000)]
    return " ".join(rng.choice(words, 400_000))


def _slices(blob: str, rng: np.random.Generator, n: int, mean: int) -> list[str]:
    lens = np.clip(rng.normal(mean, mean / 3, n), 5, 4 * mean).astype(int)
    starts = rng.integers(0, len(blob) - 4 * mean, n)
    return [blob[s:s + k] for s, k in zip(starts.tolist(), lens.tolist())]


def write_tables(out: Path, rows: int = 1_000_000, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    blob = _text_source(rng)
    n_products = max(rows // 2, 100)
    ex_path = out / "shopping_queries_dataset_examples.parquet"
    pr_path = out / "shopping_queries_dataset_products.parquet"
    locales = np.array(["us", "es", "jp"])
    labels = np.array(["E", "S", "C", "I"])
    writer = None
    qid, done = 0, 0
    while done < rows:
        n = min(CHUNK, rows - done)
        sizes = rng.integers(5, 41, n // 10 + 2)
        sizes = sizes[np.cumsum(sizes) <= n]
        sizes = np.append(sizes, n - sizes.sum())
        sizes = sizes[sizes > 0]
        q = np.repeat(np.arange(qid, qid + len(sizes)), sizes)
        qloc = locales[rng.choice(3, len(sizes), p=[0.6, 0.2, 0.2])]
        queries = _slices(blob, rng, len(sizes), 25)
        table = pa.table({
            "example_id": np.arange(done, done + n),
            "query": [queries[i - qid] for i in q.tolist()],
            "query_id": q,
            "product_id": [f"B{p:09d}" for p in rng.integers(0, n_products, n).tolist()],
            "product_locale": np.repeat(qloc, sizes),
            "esci_label": labels[rng.choice(4, n, p=[0.65, 0.22, 0.03, 0.10])],
            "small_version": rng.integers(0, 2, n),
            "large_version": np.ones(n, dtype=np.int64),
            "split": np.where(rng.random(n) < 0.7, "train", "test"),
        })
        writer = writer or pq.ParquetWriter(ex_path, table.schema)
        writer.write_table(table)
        qid += len(sizes)
        done += n
    writer.close()
    writer = None
    for start in range(0, n_products, CHUNK):
        ids = np.arange(start, min(start + CHUNK, n_products))
        for loc in ("us", "es", "jp"):
            m = len(ids)
            table = pa.table({
                "product_id": [f"B{p:09d}" for p in ids.tolist()],
                "product_locale": [loc] * m,
                "product_title": _slices(blob, rng, m, 100),
                "product_description": _slices(blob, rng, m, 800),
                "product_bullet_point": _slices(blob, rng, m, 600),
                "product_brand": _slices(blob, rng, m, 10),
                "product_color": _slices(blob, rng, m, 6),
            })
            writer = writer or pq.ParquetWriter(pr_path, table.schema)
            writer.write_table(table)
    writer.close()
    return ex_path, pr_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for path in write_tables(Path(a.out), a.rows, a.seed):
        print(path, f"{path.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
