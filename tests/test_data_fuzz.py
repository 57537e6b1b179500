"""Fuzzing the loaders: arbitrary or malformed files raise DataError and nothing else."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reclaif.data import beauty, esci, lastfm
from reclaif.errors import DataError

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5000) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=20)


@pytest.fixture(scope="module")
def names(real_data: Path) -> dict[str, str]:
    return lastfm.read_id2name(real_data / "lastfm" / "llara" / "id2name.txt")


def _only_data_errors(fn, *args, **kw) -> None:
    try:
        fn(*args, **kw)
    except DataError:
        pass


@FUZZ
@given(rows=st.lists(st.fixed_dictionaries({}, optional={
    "historyList": st.one_of(st.text(max_size=30), json_values,
                             st.sampled_from(["Morcheeba::Enigma", "Morcheeba"])),
    "itemList": st.one_of(json_values, st.lists(st.sampled_from(["Morcheeba", "Enigma", "CAKE",
                                                                 "nobody"]), max_size=22)),
    "trueSelection": st.one_of(json_values, st.sampled_from(["Enigma", "CAKE"]))}) | json_values,
    max_size=4) | json_values)
def test_sdpo_rows(rows, names, tmp_path):
    p = tmp_path / "lastfm-val.json"
    p.write_text(json.dumps(rows))
    _only_data_errors(lastfm.load_sdpo, p, names)


@FUZZ
@given(lines=st.lists(st.one_of(
    st.text(max_size=40),
    st.builds(json.dumps, st.fixed_dictionaries({}, optional={
        "history_ids": st.one_of(json_values, st.lists(st.integers(-3, 4700), max_size=12)),
        "next_id": st.one_of(json_values, st.integers(-3, 4700))}))), max_size=6))
def test_llara_lines(lines, names, tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("\n".join(lines))
    _only_data_errors(lastfm.load_llara, p, names, "train")


@FUZZ
@given(data=st.binary(max_size=200), name=st.sampled_from(["id2name.txt", "x.jsonl.gz"]))
def test_raw_bytes_to_lastfm_readers(data, name, names, tmp_path):
    p = tmp_path / name
    p.write_bytes(data)
    if name == "id2name.txt":
        _only_data_errors(lastfm.read_id2name, p)
    else:
        _only_data_errors(lastfm.load_llara, p, names, "train")


@FUZZ
@given(artists=st.text(max_size=80), tags=st.binary(max_size=80), tagged=st.text(max_size=80))
def test_hetrec_files(artists, tags, tagged, tmp_path):
    (tmp_path / "artists.dat").write_text("id\tname\n" + artists)
    (tmp_path / "tags.dat").write_bytes(b"tagID\ttagValue\n" + tags)
    (tmp_path / "user_taggedartists.dat").write_text("userID\tartistID\ttagID\n" + tagged)
    (tmp_path / "train.jsonl").write_text('{"history_ids": [], "next_id": 1}\n')
    _only_data_errors(lastfm.load_hetrec_items, tmp_path, {"1": "a", "2": "b"},
                      tmp_path / "train.jsonl")


def _csv(rows) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


@pytest.fixture(scope="module")
def beauty_meta(real_data: Path, tmp_path_factory) -> Path:
    with open(real_data / "beauty" / "meta_All_Beauty_5core_items.csv", newline="") as f:
        rows = list(csv.reader(f))[:40]
    p = tmp_path_factory.mktemp("meta") / "meta_small.csv"
    p.write_text(_csv(rows))
    return p


@FUZZ
@given(rows=st.lists(st.lists(st.one_of(st.text(max_size=15), st.sampled_from(
    ["B08LYT4Q2X", "B089CSF11Y B081ZN3TD5", "B081ZN3TD5", ""])), max_size=6), max_size=5),
    header=st.sampled_from([["user_id", "parent_asin", "rating", "timestamp", "history"],
                            ["user_id", "parent_asin"]]))
def test_beauty_rows(rows, header, beauty_meta, tmp_path):
    p = tmp_path / "All_Beauty.train.csv"
    p.write_text(_csv([header] + rows))
    _only_data_errors(beauty.load, p, beauty_meta)


@FUZZ
@given(details=st.one_of(st.text(max_size=40), st.builds(repr, json_values)),
       line=st.one_of(st.text(max_size=40), st.builds(json.dumps, json_values)))
def test_beauty_metadata(details, line, tmp_path):
    p = tmp_path / "meta.csv"
    p.write_text(_csv([["title", "details", "parent_asin"], ["t", details, "B1"]]))
    _only_data_errors(beauty.load_meta, p)
    j = tmp_path / "meta.jsonl"
    j.write_text(line + "\n")
    _only_data_errors(beauty.load_meta, j)


@FUZZ
@given(rows=st.lists(st.tuples(
    st.sampled_from(["1", "2", "", "x"]), st.text(max_size=10),
    st.sampled_from(["B1", "B2", "B3", ""]) | st.text(max_size=4),
    st.sampled_from(["us", "es", ""]),
    st.sampled_from(["E", "S", "C", "I", "Exact", "Irrelevant"]) | st.text(max_size=3),
    st.text(max_size=10)), max_size=30), raw=st.binary(max_size=64))
def test_esci_joined_csv_and_raw_files(rows, raw, tmp_path):
    p = tmp_path / "joined.csv"
    p.write_text(_csv([["query_id", "query", "product_id", "product_locale", "esci_label",
                        "product_title"]] + [list(r) for r in rows]), encoding="utf-8")
    _only_data_errors(esci.load, p)
    q = tmp_path / "examples.parquet"
    q.write_bytes(raw)
    _only_data_errors(esci.load, q, items=p)
