"""The bundled LastFM sample (reclaif/data/samples/lastfm): integrity and reproducibility."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from reclaif.data import SAMPLE_DIR, load_examples, load_items
from reclaif.data.prepare import table1


@pytest.fixture(scope="module")
def sample():
    return load_examples("sample"), load_items("sample")


def test_sample_files_and_size():
    names = sorted(p.name for p in SAMPLE_DIR.iterdir())
    assert names == ["SOURCE.md", "examples.jsonl", "interactions.jsonl", "items.jsonl",
                     "stats.json"]
    # the interaction sequences the evidence models are fitted on are ~0.44 MB of it
    assert sum(p.stat().st_size for p in SAMPLE_DIR.iterdir()) < 1_300_000
    text = (SAMPLE_DIR / "SOURCE.md").read_text()
    assert "non-commercial" in text and "make_sample.py" in text and "S-DPO" in text


def test_splits_and_candidate_sets(sample):
    exs, items = sample
    assert [e.split for e in exs].count("train") == 512
    assert [e.split for e in exs].count("valid") == 320
    assert len({e.id for e in exs}) == len(exs)
    for e in exs:
        (target,) = e.labels
        assert e.labels[target] == 1.0 and target in e.candidates
        assert len(e.candidates) == len(set(e.candidates)) == 20
        assert e.task == "sequential" and e.domain == "music" and e.context
        assert set(e.context) | set(e.candidates) <= set(items)


def test_items_are_only_referenced_ones_with_tags(sample):
    exs, items = sample
    used = {i for e in exs for i in list(e.context) + e.candidates}
    rows = [json.loads(line) for line in (SAMPLE_DIR / "interactions.jsonl").open()]
    used |= {i for r in rows for i in r["items"]}
    assert set(items) == used
    assert sum(bool(it.fields.get("tags")) for it in items.values()) >= 0.99 * len(items)


def test_users_are_disjoint_between_splits(sample):
    exs, _ = sample
    train_users = {e.user for e in exs if e.split == "train"}
    assert None not in train_users and len(train_users) > 100
    assert all(e.user is None for e in exs if e.split == "valid")  # S-DPO prompts: other users


def test_stats_match_the_files(sample):
    exs, items = sample
    stats = json.loads((SAMPLE_DIR / "stats.json").read_text())
    assert {k: stats[k] for k in ("users", "items", "interactions")} == table1(exs, items)
    assert stats["examples"] == len(exs)


@pytest.mark.slow
def test_make_sample_reproduces_the_bundled_files(shared_data, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from make_sample import make_sample

    make_sample(shared_data, tmp_path / "s")
    for name in ("examples.jsonl", "interactions.jsonl", "items.jsonl", "stats.json"):
        assert (tmp_path / "s" / name).read_bytes() == (SAMPLE_DIR / name).read_bytes(), name


def test_beauty_sample_has_both_splits_and_rebuilds_from_tests_data(repo_root, tmp_path):
    from reclaif.data import resolve_data_dir

    exs, items = load_examples("sample:beauty"), load_items("sample:beauty")
    assert [e.split for e in exs].count("train") == 1776
    assert [e.split for e in exs].count("valid") == 253
    assert all(len(set(e.candidates)) == 10 and e.domain == "beauty" for e in exs)
    assert {i for e in exs for i in list(e.context) + e.candidates} == set(items)
    # leave-last-out: the validation users are training users, each once, with a later target
    train_users = {e.user for e in exs if e.split == "train"}
    valid_users = [e.user for e in exs if e.split == "valid"]
    assert len(set(valid_users)) == 253 and set(valid_users) <= train_users
    sys.path.insert(0, str(Path(__file__).parent))
    from make_sample import make_beauty_sample

    make_beauty_sample(repo_root / "tests" / "data", tmp_path / "b")
    beauty_dir = resolve_data_dir("sample:beauty")
    for name in ("examples.jsonl", "items.jsonl", "stats.json"):
        assert (tmp_path / "b" / name).read_bytes() == (beauty_dir / name).read_bytes(), name
    assert "make_sample.py --dataset beauty" in (beauty_dir / "SOURCE.md").read_text()


def test_an_unknown_bundled_sample_names_the_bundled_ones():
    from reclaif.errors import DataError

    with pytest.raises(DataError, match=r"no bundled sample 'nope'; bundled: sample:beauty, "
                                        r"sample:lastfm"):
        load_examples("sample:nope")
