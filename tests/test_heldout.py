"""The one held-out check (reclaif.data.heldout) on the real splits, and on planted leaks that
must stop the evaluation with an error naming the example: LastFM (all LLaRA training rows
of tests/data against all its S-DPO validation prompts), Amazon Beauty (leave-last-out), ESCI
queries, and the driver's own use of it."""
from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import pytest

from reclaif.data.heldout import MAX_DUPLICATE_FRACTION, check_held_out
from reclaif.errors import DataError
from reclaif.records import Example


@pytest.fixture(scope="module")
def lastfm(real_data: Path) -> dict:
    """Every LLaRA training row and every S-DPO validation prompt of tests/data (about 1 s)."""
    from reclaif.data import lastfm as loader

    d = real_data / "lastfm"
    id2name = d / "llara" / "id2name.txt"
    train = loader.load(d / "llara" / "train.jsonl.gz", id2name=id2name).examples
    val = loader.load(d / "sdpo" / "lastfm-val.json", id2name=id2name).examples
    return {"train": train, "val": val}


@pytest.fixture(scope="module")
def beauty(real_data: Path) -> dict:
    from reclaif.data import beauty as loader

    d = real_data / "beauty"
    return {"train": loader.load(d / "All_Beauty.train.csv.gz").examples,
            "val": loader.load(d / "All_Beauty.valid.csv.gz").examples}


def _pair(ex: Example) -> tuple:
    return tuple(ex.context), tuple(sorted(ex.relevant()))


def test_real_lastfm_chance_duplicates_are_excluded_and_reported(lastfm):
    train, val = lastfm["train"], lastfm["val"]
    seen = {_pair(ex) for ex in train}
    repeats = [ex.id for ex in val if _pair(ex) in seen]  # found here independently
    assert repeats, "the S-DPO prompts are known to repeat some LLaRA training rows"
    held = check_held_out(train, val)
    assert held.excluded == repeats
    assert [ex.id for ex in held.kept] == [ex.id for ex in val if ex.id not in set(repeats)]
    assert not any(_pair(ex) in seen for ex in held.kept)
    assert len(repeats) <= MAX_DUPLICATE_FRACTION * len(val)
    note = held.note()
    assert f"{len(repeats)} of {len(val):,} evaluation examples" in note and repeats[0] in note
    # the S-DPO prompts carry no user, so nothing ties a repeat to its training user
    assert all(ex.user is None for ex in val if ex.id in set(repeats))


def test_planted_same_user_row_is_a_leak_not_a_chance_duplicate(lastfm):
    leaked = replace(lastfm["train"][100], id="planted", split="valid")
    with pytest.raises(DataError, match=r"'planted'.*user .* is also in the training input"):
        check_held_out(lastfm["train"], lastfm["val"][:50] + [leaked])


def test_planted_id_is_a_leak(lastfm):
    with pytest.raises(DataError, match=r"'lastfm:llara-train:\d+' is also a training example"):
        check_held_out(lastfm["train"], lastfm["val"][:50] + lastfm["train"][7:8])


def test_many_unnamed_repeats_mean_the_splits_overlap(lastfm):
    n = int(MAX_DUPLICATE_FRACTION * len(lastfm["val"])) + 1
    copies = [replace(ex, id=f"copy-{k}", user=None, split="valid")
              for k, ex in enumerate(lastfm["train"][:n])]
    with pytest.raises(DataError, match="splits overlap"):
        check_held_out(lastfm["train"], lastfm["val"] + copies)


def test_beauty_leave_last_out_keeps_users_but_not_their_rows(beauty):
    """Leave-last-out: the same users on both sides is the design. The official release also
    splits some users into sessions (`X_1`, `X_2`) whose rows repeat each other, so a
    validation row of one session can equal a training row of the other: excluded."""
    train, val = beauty["train"], beauty["val"]
    assert {ex.user for ex in val} & {ex.user for ex in train}  # leave-last-out: same users
    writers: dict[tuple, set] = {}
    for ex in train:
        writers.setdefault(_pair(ex), set()).add(ex.user)
    repeats = [ex.id for ex in val if _pair(ex) in writers]
    held = check_held_out(train, val)
    assert held.excluded == repeats and len(held.kept) == len(val) - len(repeats)
    for ex in val:
        if ex.id in repeats:
            assert ex.user not in writers[_pair(ex)]  # another (named) user wrote it
    with pytest.raises(DataError, match="split by user"):
        check_held_out(train, val, by_user=True)
    copy = replace(train[7], id="copy", split="valid")
    with pytest.raises(DataError, match="'copy' has the same user, history and target"):
        check_held_out(train, val + [copy])


def test_retrieval_split_is_by_query(real_data: Path):
    """Real ESCI queries; the same query (any case or spacing) on both sides is a leak."""
    judgments = real_data / "esci" / "esci_us_judgments.json.gz"
    queries = json.loads(gzip.decompress(judgments.read_bytes()))
    examples = [Example(id=f"q{k}", task="retrieval", context=q["query"], candidates=[],
                        labels={}, domain="product_search")
                for k, q in enumerate(queries["judgmentRatings"])]
    train, evaluation = examples[:100], examples[100:]
    assert len(check_held_out(train, evaluation).kept) == len(evaluation)
    planted = replace(train[3], id="planted", context="  " + train[3].context.upper())
    with pytest.raises(DataError, match="'planted' has the same query"):
        check_held_out(train, evaluation + [planted])


def test_the_driver_checks_with_the_same_helper(tmp_path: Path, repo_root: Path):
    """A run whose evaluation split repeats one of its training rows stops before any phase."""
    from reclaif.config_load import load_config
    from reclaif.data import SAMPLE_DIR, load_examples
    from reclaif.pipeline.driver import run_splits

    rows = load_examples("sample")
    train = [ex for ex in rows if ex.split == "train"]
    val = [ex for ex in rows if ex.split == "valid"]
    leak = replace(train[0], id="planted", split="valid")
    data = tmp_path / "data"
    data.mkdir()
    (data / "items.jsonl").write_text((SAMPLE_DIR / "items.jsonl").read_text())
    with open(data / "examples.jsonl", "w") as f:
        for ex in train + val[:10] + [leak]:
            f.write(json.dumps(ex.to_json()) + "\n")
    quickstart = repo_root / "configs" / "quickstart.yaml"
    cfg = load_config(quickstart, [f"data.path={data}"])
    with pytest.raises(DataError, match="'planted'"):
        run_splits(cfg)
    ok = load_config(quickstart)
    splits = run_splits(ok)
    assert len(splits.train) == ok.data.max_train_examples
    assert len(splits.evaluation) == ok.data.max_eval_examples
    # the check covers the interaction windows the evidence and baselines are fitted on: one
    # S-DPO prompt repeats an LLaRA window of another user (a chance duplicate) and is excluded
    assert len(splits.windows) == 49_824
    assert splits.held.excluded == ["lastfm:sdpo-valid:838"]
    assert "lastfm:sdpo-valid:838" not in {ex.id for ex in splits.evaluation}


def test_an_evaluation_users_sequence_in_the_interactions_stops_the_run(tmp_path: Path,
                                                                          repo_root: Path):
    """Interactions are training input too: an evaluation user's own sequence there is a leak."""
    from reclaif.config_load import load_config
    from reclaif.data import SAMPLE_DIR, load_examples
    from reclaif.pipeline.driver import run_splits

    rows = load_examples("sample")
    train = [ex for ex in rows if ex.split == "train"][:20]
    val = [replace(ex, user=f"val-u{n}") for n, ex in enumerate(
        ex for ex in rows if ex.split == "valid")][:10]
    data = tmp_path / "data"
    data.mkdir()
    (data / "items.jsonl").write_text((SAMPLE_DIR / "items.jsonl").read_text())
    (data / "examples.jsonl").write_text("".join(json.dumps(ex.to_json()) + "\n"
                                                 for ex in train + val))
    seqs = [{"user": "val-u3", "items": list(val[3].context) + list(val[3].labels),
             "split": "train"}]
    (data / "interactions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in seqs))
    cfg = load_config(repo_root / "configs" / "quickstart.yaml", [f"data.path={data}"])
    with pytest.raises(DataError, match="val-u3"):
        run_splits(cfg)
