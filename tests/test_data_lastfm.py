"""LastFM loaders on the real S-DPO / LLaRA / HetRec files, and their error paths."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from reclaif.data import lastfm
from reclaif.errors import DataError


@pytest.fixture(scope="module")
def lf(real_data: Path) -> Path:
    return real_data / "lastfm"


@pytest.fixture(scope="module")
def names(lf: Path) -> dict[str, str]:
    return lastfm.read_id2name(lf / "llara" / "id2name.txt")


def test_id2name_has_every_llara_artist(names):
    assert len(names) == 4606 and names["0"] == "Morcheeba"


def test_sdpo_keeps_the_fixed_candidates_in_prompt_order(lf, names):
    rows = json.loads((lf / "sdpo" / "lastfm-val.json").read_text(encoding="utf-8"))
    exs = lastfm.load_sdpo(lf / "sdpo" / "lastfm-val.json", names)
    assert len(exs) == len(rows) == 302  # of the release's 2,767 (tests/data/SOURCE.md)
    for ex, row in zip(exs[:200], rows[:200]):
        assert [names[c] for c in ex.candidates] == row["itemList"]
        assert [names[c] for c in ex.context] == row["historyList"].split("::")
        (target,) = ex.labels
        assert names[target] == row["trueSelection"] and target in ex.candidates
        assert ex.split == "valid" and ex.task == "sequential" and ex.domain == "music"
    assert len({ex.id for ex in exs}) == len(exs)


def test_llara_candidates_are_target_plus_19_outside_history(lf, names):
    exs, skipped = lastfm.load_llara(lf / "llara" / "val.jsonl.gz", names, "valid", seed=0)
    assert skipped == {"empty_history": 122} and len(exs) == 3133 - 122
    for ex in exs:
        (target,) = ex.labels
        assert len(ex.candidates) == len(set(ex.candidates)) == 20 and target in ex.candidates
        assert not set(ex.context) & (set(ex.candidates) - {target})
        assert ex.user is not None and ex.split == "valid"
    # The target lands at every position: the shuffle is not a fixed placement.
    assert len({ex.candidates.index(next(iter(ex.labels))) for ex in exs}) == 20


def test_llara_rows_follow_the_file(lf, names):
    with gzip.open(lf / "llara" / "train.jsonl.gz", "rt") as f:
        rows = [json.loads(next(f)) for _ in range(60)]
    exs, _ = lastfm.load_llara(lf / "llara" / "train.jsonl.gz", names, "train", limit=50)
    nonempty = [r for r in rows if r["history_ids"]][:50]
    assert [ex.context for ex in exs] == [[str(i) for i in r["history_ids"]] for r in nonempty]
    assert [list(ex.labels) for ex in exs] == [[str(r["next_id"])] for r in nonempty]


def test_llara_sampling_is_seeded_per_row_and_order_independent(lf, names, tmp_path):
    src = lf / "llara" / "val.jsonl.gz"
    a, _ = lastfm.load_llara(src, names, "valid", seed=3, limit=40)
    b, _ = lastfm.load_llara(src, names, "valid", seed=3, limit=80)
    c, _ = lastfm.load_llara(src, names, "valid", seed=4, limit=40)
    assert [e.candidates for e in a] == [e.candidates for e in b[:40]]
    assert [e.candidates for e in a] != [e.candidates for e in c]
    # A row's candidates depend on (seed, row) only, not on the rows before it.
    lines = gzip.open(src, "rt").read().splitlines()[:50]
    blank = tmp_path / "val.jsonl"
    blank.write_text("\n".join(['{"history_ids": [], "next_id": 0}'] * 10 + lines[10:]) + "\n")
    d, _ = lastfm.load_llara(blank, names, "valid", seed=3)
    by_id = {e.id: e.candidates for e in a}
    assert all(by_id[e.id] == e.candidates for e in d if e.id in by_id) and d


def test_hetrec_tags_are_top5_by_count(lf, names):
    items = lastfm.load_hetrec_items(lf / "hetrec2011-lastfm-2k", names, all_users=True,
                                     train_sequences=None)
    assert len(items) == 4606
    tagged = [i for i in items.values() if i.fields["tags"]]
    # tests/data keeps the HetRec rows of the 3,217 artists its S-DPO prompts and tests name;
    # all but "Weird Al Yankovic" (no HetRec match) are tagged (4,604 in the full release)
    assert len(tagged) == 3216
    assert all(len(i.fields["tags"].split(", ")) <= 5 for i in tagged)
    assert "trip-hop" in items["0"].fields["tags"]  # Morcheeba
    # tags.dat is Latin-1: its accented tags must decode, not turn into replacement marks.
    assert not any("\ufffd" in i.fields["tags"] for i in tagged)


def test_name_matching_falls_back_to_case_insensitive():
    idx = lastfm.NameIndex({"1": "Weird Al Yankovic", "2": "abba", "3": "ABBA"})
    assert idx.get("abba") == "2" and idx.get("ABBA") == "3" and idx.get("weird al YANKOVIC") == "1"
    assert idx.get("Nobody") is None


def _sdpo(tmp_path: Path, rows) -> Path:
    p = tmp_path / "lastfm-val.json"
    p.write_text(json.dumps(rows))
    return p


def test_sdpo_unknown_name_names_file_and_row(lf, names, tmp_path):
    rows = json.loads((lf / "sdpo" / "lastfm-val.json").read_text(encoding="utf-8"))[:3]
    rows[2]["itemList"][5] = "No Such Band 123"
    with pytest.raises(DataError, match=r"lastfm-val.json: row 2: itemList name 'No Such Band"):
        lastfm.load_sdpo(_sdpo(tmp_path, rows), names)


def test_sdpo_target_outside_candidates_is_an_error(lf, names, tmp_path):
    rows = json.loads((lf / "sdpo" / "lastfm-val.json").read_text(encoding="utf-8"))[:2]
    rows[1]["trueSelection"] = rows[1]["historyList"].split("::")[0]
    with pytest.raises(DataError, match="row 1: trueSelection .* not among the 20"):
        lastfm.load_sdpo(_sdpo(tmp_path, rows), names)


def test_sdpo_too_few_candidates_is_an_error(lf, names, tmp_path):
    rows = json.loads((lf / "sdpo" / "lastfm-val.json").read_text(encoding="utf-8"))[:1]
    rows[0]["itemList"] = rows[0]["itemList"][:12]
    with pytest.raises(DataError, match="row 0: itemList has 12 distinct artists"):
        lastfm.load_sdpo(_sdpo(tmp_path, rows), names)


def test_sdpo_missing_field_and_bad_json(names, tmp_path):
    with pytest.raises(DataError, match="row 0: missing field 'trueSelection'"):
        lastfm.load_sdpo(_sdpo(tmp_path, [{"historyList": "a", "itemList": []}]), names)
    bad = tmp_path / "broken.json"
    bad.write_text('[{"historyList": ')
    with pytest.raises(DataError, match="broken.json: not valid JSON"):
        lastfm.load_sdpo(bad, names)


def test_llara_malformed_line_names_the_line(lf, names, tmp_path):
    lines = gzip.open(lf / "llara" / "val.jsonl.gz", "rt").read().splitlines()[:5]
    p = tmp_path / "val.jsonl"
    p.write_text("\n".join(lines[:3] + ["{not json"] + lines[3:]) + "\n")
    with pytest.raises(DataError, match=r"val.jsonl:4: not valid JSON"):
        lastfm.load_llara(p, names, "valid")
    p.write_text(lines[1] + "\n" + '{"history_ids": [1, 2], "next_id": 99999}\n')
    with pytest.raises(DataError, match=r"val.jsonl:2: field 'next_id': artist id 99999"):
        lastfm.load_llara(p, names, "valid")
    p.write_text('{"history_ids": [1, 2]}\n')
    with pytest.raises(DataError, match=r"val.jsonl:1: missing field 'next_id'"):
        lastfm.load_llara(p, names, "valid")


def test_llara_catalog_too_small_is_an_error(tmp_path):
    tiny = {str(i): f"artist {i}" for i in range(15)}
    p = tmp_path / "train.jsonl"
    p.write_text('{"history_ids": [1, 2], "next_id": 3}\n')
    with pytest.raises(DataError, match="train.jsonl:1: candidate set too small"):
        lastfm.load_llara(p, tiny, "train")


def test_missing_files_are_data_errors(lf, tmp_path):
    with pytest.raises(DataError, match="nope.json: file not found"):
        lastfm.load(tmp_path / "nope.json")
    src = tmp_path / "lastfm-val.json"
    src.write_text("[]")
    with pytest.raises(DataError, match="no id2name.txt"):
        lastfm.load(src)
    with pytest.raises(DataError, match="artists.dat: file not found"):
        lastfm.load(lf / "sdpo" / "lastfm-val.json", items=tmp_path, limit=1)


def test_load_finds_id2name_hetrec_and_training_users_beside_the_source(lf, names):
    loaded = lastfm.load(lf / "sdpo" / "lastfm-val.json", limit=5)
    assert len(loaded.examples) == 5
    # Morcheeba is the first training user's first artist: its clean tags are that user's
    clean = lastfm.load_hetrec_items(lf / "hetrec2011-lastfm-2k", names,
                                     lf / "llara" / "train.jsonl.gz")
    assert loaded.items == clean
    assert "trip-hop" in loaded.items["0"].fields["tags"]


def test_a_repeated_id_in_id2name_is_named_not_replaced(tmp_path):
    p = tmp_path / "id2name.txt"
    p.write_text("1::Muse\n2::Blur\n1::Muse\n")
    assert lastfm.read_id2name(p) == {"1": "Muse", "2": "Blur"}
    p.write_text("1::Muse\n2::Blur\n1::Oasis\n")
    with pytest.raises(DataError, match=r"id2name.txt:3: id 1 repeats line 1"):
        lastfm.read_id2name(p)


def test_hetrec_files_may_be_gzipped(lf, names, tmp_path):
    """tests/data holds the HetRec files gzipped; the plain release reads the same."""
    import shutil

    gz = lf / "hetrec2011-lastfm-2k"
    for name in ("artists.dat", "tags.dat", "user_taggedartists.dat"):
        with gzip.open(gz / f"{name}.gz", "rb") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    train = lf / "llara" / "train.jsonl.gz"
    plain = lastfm.load_hetrec_items(tmp_path, names, train)
    assert plain == lastfm.load_hetrec_items(gz, names, train)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "artists.dat.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"artists.dat.gz: unreadable"):
        lastfm.load_hetrec_items(tmp_path / "bad", names, train)
