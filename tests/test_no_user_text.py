"""Nothing an evaluated user wrote reaches their prompt (issue 30 item 4, the LastFM tag leak's
check on the other datasets): Beauty items are the catalog's metadata, never reviews or ratings
(aggregates over all users, the evaluated one included); ESCI items are the product catalog's
text, never a column beside it. LastFM: tests/test_clean_tags.py."""
from __future__ import annotations

import ast
import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from reclaif.data import beauty, esci, load_items
from test_data_esci import _official_pair

MARK = "plantedusertext"
USER_KEYS = {"rating", "average_rating", "rating_number", "review", "reviews", "text",
             "user_id", "helpful_vote"}


def test_beauty_items_carry_no_review_or_rating(real_data, tmp_path):
    bd = real_data / "beauty"
    with open(bd / "meta_All_Beauty_5core_items.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # The 2023 release's meta_*.jsonl has the all-user aggregates average_rating and
    # rating_number; reviews are planted beside them as if a release joined them.
    meta = tmp_path / "meta_All_Beauty.jsonl"
    meta.write_text("".join(json.dumps({
        "title": r["title"], "parent_asin": r["parent_asin"], "average_rating": 4.5,
        "rating_number": 99, "reviews": [{"text": f"{MARK} loved it", "rating": 5}],
        "details": ast.literal_eval(r["details"]) if r["details"] else {}}) + "\n"
        for r in rows))
    # The benchmark's own rating column: the evaluated user's rating of each item.
    with gzip.open(bd / "All_Beauty.valid.csv.gz", "rt", newline="") as f:
        table = list(csv.DictReader(f))
    src = tmp_path / "All_Beauty.valid.csv"
    with open(src, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows({**r, "rating": "1.0"} for r in table)
    got = beauty.load(src, meta)
    assert len(got.examples) == 253
    for it in got.items.values():
        assert not USER_KEYS & set(it.fields) and MARK not in it.text()
    for ex in got.examples:
        assert set(ex.labels.values()) == {1.0} and MARK not in json.dumps(ex.to_json())


def test_the_bundled_beauty_sample_has_no_user_fields():
    items = load_items("sample:beauty")
    assert items and not any(USER_KEYS & set(it.fields) for it in items.values())


def test_esci_items_are_the_catalog_columns_only(real_data, tmp_path):
    examples, products, _ = _official_pair(real_data, tmp_path)
    table = pq.read_table(products)
    planted = table.append_column("product_reviews",
                                  pa.array([f"{MARK} five stars"] * table.num_rows))
    pq.write_table(planted, products)
    got = esci.load(examples)
    stream = got.item_stream or (lambda ids: (got.items[i] for i in ids))
    needed = {c for ex in got.examples for c in ex.candidates}
    items = list(stream(needed))
    assert len(items) == len(needed)
    for it in items:
        assert set(it.fields) <= {"brand", "color", "bullet_points", "description"}
        assert MARK not in it.text()
