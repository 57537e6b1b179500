"""`reclaif data prepare|stats` end to end through the CLI, on the real data (tests/data)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from reclaif.cli import main
from reclaif.data import load_examples, load_items
from reclaif.data.prepare import prepare


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_cli_prepares_sdpo_valid_with_table1_counts(real_data, tmp_path, capsys):
    out = tmp_path / "lastfm-valid"
    rc = main(["data", "prepare", "--dataset", "lastfm", "--source",
               str(real_data / "lastfm" / "sdpo" / "lastfm-val.json"), "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["examples.jsonl", "items.jsonl", "stats.json"]
    stats = json.loads((out / "stats.json").read_text())
    exs, items = load_examples(out), load_items(out)
    # tests/data keeps 302 of the release's 2,767 prompts (tests/data/SOURCE.md)
    assert stats["examples"] == len(exs) == 302 and stats["examples_per_split"] == {"valid": 302}
    # No user ids in S-DPO prompts: each prompt is a user; interactions = history + target.
    assert stats["users"] == 302
    assert stats["interactions"] == sum(len(e.context) + 1 for e in exs)
    used = {i for e in exs for i in list(e.context) + e.candidates}
    assert stats["items"] == len(items) and set(items) == used
    # Clean tags only (training users' tagging); tests/data holds 61 training users, whose
    # 6,354 tag assignments tag a few hundred of these artists
    assert sum(bool(items[i].fields["tags"]) for i in used) > 100
    assert "| lastfm | sequential | 302 |" in capsys.readouterr().out


def test_cli_beauty_counts_users_and_events(real_data, tmp_path, capsys):
    out = tmp_path / "beauty"
    src = real_data / "beauty" / "All_Beauty.train.csv.gz"
    assert main(["data", "prepare", "--dataset", "beauty", "--source", str(src),
                 "--items", str(real_data / "beauty" / "meta_All_Beauty_5core_items.csv"),
                 "--out", str(out)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    # 2,029 rows of 253 users: first rows (empty history) skipped, their items still events.
    assert (stats["users"], stats["interactions"]) == (253, 2029)
    assert stats["skipped"] == {"empty_history": 253} and stats["examples"] == 2029 - 253
    capsys.readouterr()
    assert main(["data", "stats", str(out), "sample"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| directory |") and len(table) == 2 + 2  # header + 2 dirs
    assert "| beauty | sequential | 253 | 356 | 2,029 | 1,776 |" in table[2]
    assert table[3].startswith("| sample | lastfm | sequential |")


def test_same_seed_same_files_other_seed_differs(real_data, tmp_path):
    # Copied alone (no HetRec beside it: tags are empty) so the three runs stay quick.
    (tmp_path / "llara").mkdir()
    for name in ("val.jsonl.gz", "id2name.txt"):
        shutil.copy(real_data / "lastfm" / "llara" / name, tmp_path / "llara" / name)
    src = tmp_path / "llara" / "val.jsonl.gz"
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        prepare("lastfm", src, tmp_path / name, seed=seed, limit=300)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a == b
    assert a["examples.jsonl"] != c["examples.jsonl"]


def test_failure_leaves_out_untouched(real_data, tmp_path, capsys):
    out = tmp_path / "out"
    src = real_data / "beauty" / "All_Beauty.valid.csv.gz"
    prepare("beauty", src, out, limit=5)
    before = _files(out)
    bad = tmp_path / "All_Beauty.valid.csv"
    bad.write_text("user_id,parent_asin,rating,timestamp,history\nU1,B0NOPE,5,1,B07J3GH1W1\n")
    rc = main(["data", "prepare", "--dataset", "beauty", "--source", str(bad), "--items",
               str(real_data / "beauty" / "meta_All_Beauty_5core_items.csv"), "--out", str(out)])
    assert rc == 2
    assert "All_Beauty.valid.csv:2: parent_asin item 'B0NOPE'" in capsys.readouterr().err
    assert _files(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp dirs


def test_missing_source_and_fresh_out_on_error(tmp_path, capsys):
    out = tmp_path / "fresh"
    rc = main(["data", "prepare", "--dataset", "esci", "--source", str(tmp_path / "x.parquet"),
               "--out", str(out)])
    assert rc == 2 and "x.parquet: file not found" in capsys.readouterr().err
    assert not out.exists()
    rc = main(["data", "stats", str(tmp_path)])
    assert rc == 2 and "stats.json: file not found" in capsys.readouterr().err


@pytest.mark.slow
def test_full_llara_train_prepares_in_under_a_minute(shared_data, tmp_path):
    cpu = time.process_time()
    stats = prepare("lastfm", shared_data / "lastfm" / "llara" / "train.jsonl.gz", tmp_path / "t")
    # CPU seconds, not wall: CI machines are shared and wall time measures the neighbours.
    assert time.process_time() - cpu < 60
    assert (stats["users"], stats["items"], stats["interactions"]) == (976, 4606, 50800)
    assert stats["examples"] == 50800 - 976


# ------------------------------------------------------------- prepare touches only its own
def _beauty(shared_data) -> Path:
    return shared_data / "beauty" / "All_Beauty.valid.csv.gz"


def test_a_users_examples_file_in_out_is_never_deleted(shared_data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "examples-old.jsonl").write_text('{"mine": true}\n')
    rc = main(["data", "prepare", "--dataset", "beauty", "--source", str(_beauty(shared_data)),
               "--limit", "5", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "examples-old.jsonl, which prepare did not write" in err
    assert (out / "examples-old.jsonl").read_text() == '{"mine": true}\n'
    assert sorted(p.name for p in out.iterdir()) == ["examples-old.jsonl"]


def test_reprepare_replaces_only_its_own_shards(shared_data, tmp_path):
    out = tmp_path / "out"
    prepare("beauty", _beauty(shared_data), out, limit=6, shard_size=2)
    assert sorted(p.name for p in out.glob("examples*")) == [f"examples-0000{i}.jsonl"
                                                             for i in range(3)]
    (out / "notes.txt").write_text("keep me")
    prepare("beauty", _beauty(shared_data), out, limit=4)
    assert sorted(p.name for p in out.glob("examples*")) == ["examples.jsonl"]
    assert (out / "notes.txt").read_text() == "keep me"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("args, message", [
    (["--out", ""], "error: out: empty"), (["--out", "   "], "error: out: empty"),
    (["--limit", "-1"], "error: limit -1: must be 0"),
    (["--shard-size", "-3"], "error: shard_size -3")])
def test_bad_out_limit_and_shard_size_are_one_line(shared_data, tmp_path, monkeypatch, capsys,
                                                   args, message):
    monkeypatch.chdir(tmp_path)
    argv = ["data", "prepare", "--dataset", "beauty", "--source", str(_beauty(shared_data)),
            "--out", str(tmp_path / "o"), *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written into the current directory


def test_out_on_another_filesystem_renames_within_it(shared_data, tmp_path, monkeypatch):
    """A mount point as --out: every rename must stay inside it. os.replace here raises EXDEV,
    as the kernel does, for any rename that crosses the boundary of `out`."""
    import errno
    import os as _os

    out = tmp_path / "mnt"
    out.mkdir()
    real = _os.replace

    def replace(src, dst):
        inside = [Path(p).resolve().is_relative_to(out.resolve()) for p in (src, dst)]
        if inside[0] != inside[1]:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        return real(src, dst)

    monkeypatch.setattr(_os, "replace", replace)
    prepare("beauty", _beauty(shared_data), out, limit=3)
    prepare("beauty", _beauty(shared_data), out, limit=4)
    assert len((out / "examples.jsonl").read_text().splitlines()) == 4
