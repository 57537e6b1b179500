"""Amazon Beauty 2023 loader on the real benchmark CSVs and metadata (CSV and official jsonl)."""
from __future__ import annotations

import ast
import csv
import gzip
import json
import shutil
from pathlib import Path

import pytest

from reclaif.data import beauty
from reclaif.errors import DataError


@pytest.fixture(scope="module")
def bd(real_data: Path) -> Path:
    return real_data / "beauty"


def _rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def test_valid_split_last_10_history_and_10_candidates(bd):
    got = beauty.load(bd / "All_Beauty.valid.csv.gz")
    rows = _rows(bd / "All_Beauty.valid.csv.gz")
    assert len(got.examples) == len(rows) == 253 and got.skipped == {"empty_history": 0}
    for ex, row in zip(got.examples, rows):
        hist = row["history"].split()
        assert ex.context == hist[-10:] and ex.user == row["user_id"]
        assert ex.labels == {row["parent_asin"]: 1.0}
        assert len(ex.candidates) == len(set(ex.candidates)) == 10
        assert row["parent_asin"] in ex.candidates
        assert not (set(ex.candidates) - {row["parent_asin"]}) & set(hist)
        assert ex.split == "valid" and ex.domain == "beauty" and ex.task == "sequential"
        assert set(ex.candidates) <= set(got.items)


def test_train_split_skips_first_rows_and_is_seeded(bd):
    a = beauty.load(bd / "All_Beauty.train.csv.gz", limit=200)
    b = beauty.load(bd / "All_Beauty.train.csv.gz", limit=100)
    c = beauty.load(bd / "All_Beauty.train.csv.gz", limit=100, seed=9)
    assert {e.split for e in a.examples} == {"train"} and a.skipped["empty_history"] > 0
    assert [e.candidates for e in a.examples[:100]] == [e.candidates for e in b.examples]
    assert [e.candidates for e in b.examples] != [e.candidates for e in c.examples]
    assert len({e.id for e in a.examples}) == 200


def test_csv_metadata_parses_details_dict(bd):
    items = beauty.load_meta(bd / "meta_All_Beauty_5core_items.csv")
    assert len(items) == 356
    it = items["B08LYT4Q2X"]
    assert it.fields["brand"] == "Shiny Leaf" and it.fields["item_form"] == "Oil"
    assert "upc" not in it.fields and "package_dimensions" not in it.fields
    assert sum("description" in i.fields for i in items.values()) == 20
    assert sum("price" in i.fields for i in items.values()) == 57


def test_official_jsonl_metadata_layout(bd, tmp_path):
    """meta_*.jsonl as the 2023 release writes it, made from the CSV's real rows."""
    with open(bd / "meta_All_Beauty_5core_items.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lines = []
    for r in rows:
        lines.append(json.dumps({
            "main_category": "All Beauty", "title": r["title"], "average_rating": 4.5,
            "rating_number": 10, "features": ["Made from real rows", r["title"][:30]],
            "description": [r["description"]] if r["description"] else [],
            "price": float(r["price"]) if r["price"] else None, "images": [], "videos": [],
            "store": None, "categories": [],
            "details": ast.literal_eval(r["details"]) if r["details"] else {},
            "parent_asin": r["parent_asin"], "bought_together": None}))
    meta = tmp_path / "meta_All_Beauty.jsonl"
    meta.write_text("\n".join(lines) + "\n")
    from_jsonl = beauty.load_meta(meta)
    from_csv = beauty.load_meta(bd / "meta_All_Beauty_5core_items.csv")
    assert set(from_jsonl) == set(from_csv)
    for asin, it in from_csv.items():
        j = from_jsonl[asin]
        assert j.title == it.title and j.fields["features"].startswith("Made from real rows")
        assert {k: v for k, v in j.fields.items() if k not in ("features", "price")} == \
            {k: v for k, v in it.fields.items() if k != "price"}
    src = tmp_path / "All_Beauty.valid.csv.gz"
    shutil.copy(bd / "All_Beauty.valid.csv.gz", src)
    got = beauty.load(src)  # finds meta_*.jsonl beside the source
    assert len(got.examples) == 253 and "features" in next(iter(got.items.values())).fields


def test_split_from_file_name_or_flag(bd, tmp_path):
    plain = tmp_path / "beauty_rows.csv"
    plain.write_bytes(gzip.decompress((bd / "All_Beauty.valid.csv.gz").read_bytes()))
    meta = bd / "meta_All_Beauty_5core_items.csv"
    with pytest.raises(DataError, match="beauty_rows.csv: cannot tell the split"):
        beauty.load(plain, items=meta)
    got = beauty.load(plain, items=meta, split="test", limit=3)
    assert [e.split for e in got.examples] == ["test"] * 3


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "All_Beauty.valid.csv"
    p.write_text(text)
    return p


def test_bad_rows_name_file_and_line(bd, tmp_path):
    meta = bd / "meta_All_Beauty_5core_items.csv"
    lines = gzip.decompress((bd / "All_Beauty.valid.csv.gz").read_bytes()).decode().splitlines()
    with pytest.raises(DataError, match="All_Beauty.valid.csv:1: missing column 'history'"):
        beauty.load(_write(tmp_path, "user_id,parent_asin,rating,timestamp\nu,B1,5,1\n"), meta)
    with pytest.raises(DataError, match=r"All_Beauty.valid.csv:3: 3 fields, header has 5"):
        beauty.load(_write(tmp_path, "\n".join(lines[:2] + ["a,b,c"]) + "\n"), meta)
    bad = lines[2].replace(lines[2].split(",")[1], "B0NOTREAL0", 1)
    with pytest.raises(DataError, match="csv:3: parent_asin item 'B0NOTREAL0' is not in"):
        beauty.load(_write(tmp_path, "\n".join(lines[:2] + [bad]) + "\n"), meta)
    with pytest.raises(DataError, match="file not found"):
        beauty.load(tmp_path / "All_Beauty.test.csv.gz", meta)


def test_tiny_catalog_is_candidate_set_too_small(bd, tmp_path):
    with open(bd / "meta_All_Beauty_5core_items.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lines = gzip.decompress((bd / "All_Beauty.valid.csv.gz").read_bytes()).decode().splitlines()
    hist_row = next(csv.reader([lines[1]]))
    keep = set(hist_row[4].split()[-10:]) | {hist_row[1]}
    meta = tmp_path / "meta_small.csv"
    with open(meta, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["parent_asin"] in keep)
    with pytest.raises(DataError, match="csv:2: candidate set too small"):
        beauty.load(_write(tmp_path, "\n".join(lines[:2]) + "\n"), meta)


def test_bad_metadata_is_named(tmp_path):
    p = tmp_path / "meta_x.csv"
    p.write_text('title,details,parent_asin\n"A thing","{\'Brand\': __import__(\'os\')}",B1\n')
    with pytest.raises(DataError, match="meta_x.csv:2: field 'details' is not a Python dict"):
        beauty.load_meta(p)
    j = tmp_path / "meta_x.jsonl"
    j.write_text('{"parent_asin": "B1", "title": "ok"}\n{"title": "no asin"}\n')
    with pytest.raises(DataError, match="meta_x.jsonl:2: missing field 'parent_asin'"):
        beauty.load_meta(j)


def test_a_repeated_item_id_in_the_catalog_is_named_not_replaced(tmp_path):
    p = tmp_path / "meta_x.csv"
    p.write_text('title,parent_asin\nFirst,B1\nOther,B2\nFirst,B1\n')
    assert [i.title for i in beauty.load_meta(p).values()] == ["First", "Other"]  # exact repeat
    p.write_text('title,parent_asin\nFirst,B1\nOther,B2\nSecond,B1\n')
    with pytest.raises(DataError, match="meta_x.csv:4: parent_asin 'B1' repeats line 2 with "
                                        "other text"):
        beauty.load_meta(p)
    j = tmp_path / "meta_x.jsonl"
    j.write_text('{"parent_asin": "B1", "title": "a"}\n{"parent_asin": "B1", "title": "b"}\n')
    with pytest.raises(DataError, match="meta_x.jsonl:2: parent_asin 'B1' repeats line 1"):
        beauty.load_meta(j)


def test_a_repeated_id_in_items_jsonl_is_named(tmp_path):
    from reclaif.data import load_items

    (tmp_path / "items.jsonl").write_text('{"id": "a", "title": "A"}\n{"id": "b", "title": "B"}\n'
                                          '{"id": "a", "title": "A2"}\n')
    with pytest.raises(DataError, match=r"items.jsonl: record 3: item id 'a' repeats record 1"):
        load_items(tmp_path)
    (tmp_path / "items.jsonl").write_text('{"id": "a", "title": "A"}\n{"id": "a", "title": "A"}\n')
    assert list(load_items(tmp_path)) == ["a"]
