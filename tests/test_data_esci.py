"""ESCI loader on files in exactly the official schema, built from the real rows we have:
esci_sample200.csv (joined layout, real text) and esci_us_judgments.json (150 real queries with
their judged product ids and E/S/C/I ratings)."""
from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from reclaif.data import esci, load_examples, load_items
from reclaif.data.prepare import prepare
from reclaif.errors import DataError

RATING_TO_LABEL = {"100.000": "E", "10.000": "S", "1.000": "C", "0.000": "I"}
GAIN = {"E": 1.0, "S": 0.1, "C": 0.01, "I": 0.0}


def _official_pair(data: Path, out: Path) -> tuple[Path, Path, dict]:
    """Returns (examples parquet, products parquet, {query_id: {product_id: label}})."""
    sample = pacsv.read_csv(data / "esci" / "esci_sample200.csv.gz",
                            parse_options=pacsv.ParseOptions(newlines_in_values=True)).to_pylist()
    judgments = data / "esci" / "esci_us_judgments.json.gz"
    judged = json.loads(gzip.decompress(judgments.read_bytes()))
    ex = {c: [] for c in ["example_id", "query", "query_id", "product_id", "product_locale",
                          "esci_label", "small_version", "large_version", "split"]}
    truth: dict[str, dict[str, str]] = {}

    def add(qid, query, pid, locale, label):
        ex["example_id"].append(len(ex["example_id"]))
        ex["query"].append(query)
        ex["query_id"].append(qid)
        ex["product_id"].append(pid)
        ex["product_locale"].append(locale)
        ex["esci_label"].append(label)
        ex["small_version"].append(1)
        ex["large_version"].append(1)
        ex["split"].append("train")
        if locale == "us":
            truth.setdefault(str(qid), {})[pid] = label

    for row in sample:
        add(row["query_id"], row["query"], row["product_id"], "us", row["esci_label"][0])
    for k, q in enumerate(judged["judgmentRatings"]):
        for r in q["ratings"]:
            add(500_000 + k, q["query"], r["docId"], "us", RATING_TO_LABEL[r["rating"]])
    # A Spanish-locale query with plenty of Exact products: the loader must drop it.
    first = judged["judgmentRatings"][0]["ratings"]
    for r in first:
        add(900_000, "toallas de cocina", r["docId"], "es", "E")
    pids = sorted({p for p in ex["product_id"]})
    text = [s for s in sample]
    products = {
        "product_id": pids + [first[0]["docId"]],
        "product_locale": ["us"] * len(pids) + ["es"],
        # Judged products have no text in our fragments: real listing text is lent to them.
        "product_title": [text[i % len(text)]["product_title"] for i in range(len(pids))] + ["x"],
        "product_description": [text[i % len(text)]["product_description"]
                                for i in range(len(pids))] + [None],
        "product_bullet_point": [text[i % len(text)]["product_bullet_point"]
                                 for i in range(len(pids))] + [None],
        "product_brand": [text[i % len(text)]["product_brand"] for i in range(len(pids))] + [None],
        "product_color": [text[i % len(text)]["product_color"] for i in range(len(pids))] + [None],
    }
    out.mkdir(parents=True, exist_ok=True)
    e, p = out / esci.EXAMPLES_FILE, out / esci.PRODUCTS_FILE
    pq.write_table(pa.table(ex), e, row_group_size=1000)
    pq.write_table(pa.table(products), p, row_group_size=1000)
    return e, p, truth


@pytest.fixture(scope="module")
def pair(real_data: Path, tmp_path_factory) -> tuple[Path, Path, dict]:
    return _official_pair(real_data, tmp_path_factory.mktemp("esci"))


@pytest.fixture(scope="module")
def loaded(pair):
    return esci.load(pair[0])


def test_official_pair_gives_15_candidates_10_exact(loaded, pair):
    truth = pair[2]
    qualifying = [q for q, labels in truth.items()
                  if sum(v == "E" for v in labels.values()) >= 10
                  and sum(v != "E" for v in labels.values()) >= 5]
    assert len(loaded.examples) == len(qualifying) == 123
    for ex in loaded.examples:
        qid = ex.id.split(":", 1)[1]
        assert ex.task == "retrieval" and ex.domain == "product_search"
        assert len(ex.candidates) == len(set(ex.candidates)) == 15
        assert sorted(ex.labels.values()).count(1.0) == 10
        assert {c: ex.labels[c] for c in ex.candidates} == {c: GAIN[truth[qid][c]]
                                                           for c in ex.candidates}
        assert isinstance(ex.context, str) and ex.context


def test_skips_are_counted_and_other_locales_dropped(loaded):
    # 200 sample queries have one product each; 150 - 123 judged ones are too thin; 'es' dropped.
    assert sum(loaded.skipped.values()) == 200 + 150 - 123
    assert not any(ex.id == "esci:900000" for ex in loaded.examples)


def test_items_are_exactly_the_candidates_with_text(loaded):
    needed = {c for ex in loaded.examples for c in ex.candidates}
    assert set(loaded.items) == needed
    assert all(it.title and it.title != it.id for it in loaded.items.values())


def test_split_is_60_20_20_by_query_and_seeded(loaded, pair):
    counts = Counter(ex.split for ex in loaded.examples)
    assert set(counts) == {"train", "valid", "test"}
    assert counts["train"] > counts["valid"] and counts["train"] > counts["test"]
    big = Counter(esci.split_of(str(q), 0) for q in range(20_000))
    assert abs(big["train"] / 20_000 - 0.6) < 0.02 and abs(big["test"] / 20_000 - 0.2) < 0.02
    other = esci.load(pair[0], seed=1)
    assert [e.split for e in other.examples] != [e.split for e in loaded.examples]
    assert [e.candidates for e in esci.load(pair[0]).examples] == \
        [e.candidates for e in loaded.examples]
    only = esci.load(pair[0], split="test")
    assert {e.split for e in only.examples} == {"test"} and len(only.examples) == counts["test"]


def test_joined_csv_and_parquet_layouts_match_the_pair(pair, tmp_path):
    ex = pq.read_table(pair[0]).to_pylist()
    prod = {(r["product_id"], r["product_locale"]): r for r in pq.read_table(pair[1]).to_pylist()}
    rows = [{**r, **{k: v for k, v in prod[(r["product_id"], "us")].items()
                     if k.startswith("product_")}} for r in ex if r["product_locale"] == "us"]
    long = {"Exact": "E", "Substitute": "S", "Complement": "C", "Irrelevant": "I"}
    for r in rows:  # the joined release spells the labels out
        r["esci_label"] = {v: k for k, v in long.items()}[r["esci_label"]]
    table = pa.Table.from_pylist(rows)
    pacsv.write_csv(table, tmp_path / "joined.csv")
    pq.write_table(table, tmp_path / "joined.parquet")
    ref = esci.load(pair[0])
    for path in (tmp_path / "joined.csv", tmp_path / "joined.parquet"):
        got = esci.load(path)
        assert [(e.id, e.candidates, e.labels, e.split) for e in got.examples] == \
            [(e.id, e.candidates, e.labels, e.split) for e in ref.examples]
        assert {i: it.title for i, it in got.items.items()} == \
            {i: it.title for i, it in ref.items.items()}


def test_real_joined_sample_has_no_candidate_sets(real_data, tmp_path):
    got = esci.load(real_data / "esci" / "esci_sample200.csv.gz")
    assert got.examples == [] and got.skipped["fewer_than_10_exact"] == 200
    with pytest.raises(DataError, match="no examples"):
        prepare("esci", real_data / "esci" / "esci_sample200.csv.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_label_names_the_row(pair, tmp_path):
    t = pq.read_table(pair[0])
    labels = t.column("esci_label").to_pylist()
    labels[7] = "Maybe"
    bad = tmp_path / "bad.parquet"
    pq.write_table(t.set_column(t.schema.get_field_index("esci_label"), "esci_label",
                                pa.array(labels)), bad)
    with pytest.raises(DataError, match=r"bad.parquet: row 8: unknown esci_label 'Maybe'"):
        esci.load(bad, items=pair[1])


def test_missing_column_and_missing_product_are_errors(pair, tmp_path):
    t = pq.read_table(pair[0]).drop(["esci_label"])
    pq.write_table(t, tmp_path / "nolabel.parquet")
    with pytest.raises(DataError, match="nolabel.parquet: missing column 'esci_label'"):
        esci.load(tmp_path / "nolabel.parquet", items=pair[1])
    p = pq.read_table(pair[1])
    needed = esci.load(pair[0]).examples[0].candidates[0]
    keep = pa.array([pid != needed for pid in p.column("product_id").to_pylist()])
    pq.write_table(p.filter(keep), tmp_path / "products.parquet")
    with pytest.raises(DataError, match=f"not in it.*{needed}"):
        esci.load(pair[0], items=tmp_path / "products.parquet")
    with pytest.raises(DataError, match="file not found"):
        esci.load(pair[0], items=tmp_path / "absent.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="junk.parquet: not a readable parquet"):
        esci.load(tmp_path / "junk.parquet")


def test_sharded_prepare_reads_back_whole(pair, tmp_path):
    stats = prepare("esci", pair[0], tmp_path / "sharded", shard_size=50)
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("examples*.jsonl"))
    assert shards == ["examples-00000.jsonl", "examples-00001.jsonl", "examples-00002.jsonl"]
    back = load_examples(tmp_path / "sharded")
    assert [e.id for e in back] == [e.id for e in esci.load(pair[0]).examples]
    assert stats["users"] == stats["examples"] == 123 and stats["interactions"] == 123 * 15
    assert set(load_items(tmp_path / "sharded")) == {c for e in back for c in e.candidates}
    # Re-preparing unsharded replaces the shards instead of mixing with them.
    prepare("esci", pair[0], tmp_path / "sharded")
    assert [p.name for p in (tmp_path / "sharded").glob("examples*.jsonl")] == ["examples.jsonl"]


def test_streamed_items_failure_leaves_no_output(pair, tmp_path):
    p = pq.read_table(pair[1])
    pq.write_table(p.slice(0, 10), tmp_path / "products.parquet")
    with pytest.raises(DataError, match="candidate products are not in it"):
        prepare("esci", pair[0], tmp_path / "out", items=tmp_path / "products.parquet")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["products.parquet"]


def test_repeated_product_id_with_other_text_is_an_error(pair, tmp_path):
    p = pq.read_table(pair[1])
    needed = esci.load(pair[0]).examples[0].candidates[0]
    row = p.column("product_id").to_pylist().index(needed)
    same = pa.concat_tables([p, p.slice(row, 1)])
    pq.write_table(same, tmp_path / "same.parquet")
    first = {it.id: it for it in esci.load(pair[0], items=pair[1]).items.values()}
    again = esci.load(pair[0], items=tmp_path / "same.parquet").items
    assert again[needed] == first[needed]  # an exact repeat (the joined layout's) is harmless
    other = p.slice(row, 1).set_column(
        p.schema.get_field_index("product_title"), "product_title",
        pa.array(["Another title"], p.schema.field("product_title").type))
    pq.write_table(pa.concat_tables([p, other]), tmp_path / "other.parquet")
    with pytest.raises(DataError, match=rf"other.parquet: row {p.num_rows + 1}: product_id "
                                        rf"'{needed}' repeats row {row + 1} with other text"):
        esci.load(pair[0], items=tmp_path / "other.parquet")
