"""Clean tags (issue 30): an artist's tags come only from HetRec users identified as LLaRA
training users, so no evaluated user's own tagging reaches their prompt; planted on the real
tests/data files."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from reclaif.data import lastfm

PLANTED = "planted-leak"
N_PLANTED = 30  # enough taggers that the planted tag would top the target's tags if kept


def _plant(real_data: Path, out: Path, artist_sets: list[list[str]], tag: str) -> Path:
    """tests/data's LastFM layout in `out`, plus N_PLANTED HetRec users per artist set who each
    tagged every artist of it with `tag` (artist ids are HetRec's)."""
    src = real_data / "lastfm"
    shutil.copytree(src / "llara", out / "llara")
    shutil.copytree(src / "sdpo", out / "sdpo")
    het = out / lastfm.HETREC_DIRNAME
    het.mkdir()
    for name in ("artists.dat", "tags.dat", "user_taggedartists.dat"):
        with gzip.open(src / lastfm.HETREC_DIRNAME / f"{name}.gz", "rb") as f:
            (het / name).write_bytes(f.read())
    with open(het / "tags.dat", "ab") as f:
        f.write(f"99999\t{tag}\n".encode("latin-1"))
    with open(het / "user_taggedartists.dat", "a", encoding="utf-8") as f:
        for s, arts in enumerate(artist_sets):
            for u in range(N_PLANTED):
                for a in arts:
                    f.write(f"{900000 + 1000 * s + u}\t{a}\t99999\t1\t1\t2010\n")
    return out


def _hetrec_ids(real_data: Path, llara_ids: list[str], names: dict[str, str]) -> dict[str, str]:
    """LLaRA id → HetRec id, for those of `llara_ids` that tests/data's artists.dat names."""
    by_name = {}
    with gzip.open(real_data / "lastfm" / lastfm.HETREC_DIRNAME / "artists.dat.gz", "rt",
                   encoding="utf-8") as f:
        for line in list(f)[1:]:
            hid, name = line.split("\t")[:2]
            by_name.setdefault(name, hid)
    return {i: by_name[names[i]] for i in llara_ids if names[i] in by_name}


@pytest.fixture(scope="module")
def names(real_data: Path) -> dict[str, str]:
    return lastfm.read_id2name(real_data / "lastfm" / "llara" / "id2name.txt")


def test_a_tagger_covering_an_evaluation_prompt_is_dropped(real_data, names, tmp_path):
    prompt = lastfm.load_sdpo(real_data / "lastfm" / "sdpo" / "lastfm-val.json", names,
                              limit=1)[0]
    target = next(iter(prompt.labels))
    covered = list(_hetrec_ids(real_data, [*prompt.context, target], names).values())
    assert len(covered) == len(prompt.context) + 1
    root = _plant(real_data, tmp_path / "lastfm", [covered], PLANTED)
    het, train = root / lastfm.HETREC_DIRNAME, root / "llara" / "train.jsonl.gz"

    leaky = lastfm.load_hetrec_items(het, names, train, all_users=True)
    assert PLANTED in leaky[target].fields["tags"]  # the leak the rule must stop

    loaded = lastfm.load(root / "sdpo" / "lastfm-val.json", limit=1)
    assert not any(PLANTED in it.fields["tags"] for it in loaded.items.values())
    _, prov = lastfm.hetrec_catalog(het, names, train)
    assert prov.assignments_dropped >= N_PLANTED * len(covered)


def test_a_tagger_whose_artists_are_a_training_users_is_kept(real_data, names, tmp_path):
    """The rule keeps training users' tagging, whole: a HetRec user whose tagged artists are
    exactly one LLaRA training user's artists counts as that user."""
    first_user = lastfm.read_training_sets(real_data / "lastfm" / "llara" / "train.jsonl.gz")[0]
    # (cut to the artists tests/data's HetRec files name, as the rule cuts both sides)
    known = _hetrec_ids(real_data, sorted(first_user), names)
    root = _plant(real_data, tmp_path / "lastfm", [list(known.values())], "planted-train")
    items = lastfm.load_hetrec_items(root / lastfm.HETREC_DIRNAME, names,
                                     root / "llara" / "train.jsonl.gz")
    assert known and all("planted-train" in items[i].fields["tags"] for i in known)


def test_training_taggers_needs_the_whole_set_not_containment():
    training = [{"1", "2"}, {"3", "4", "5", "6"}]
    tagged = {"exact": {"1", "2"}, "superset": {"1", "2", "9"}, "subset": {"3", "4"},
              "cut": {"3", "4", "5"}}
    # "6" is no artist the HetRec files name: cut from the training set, so "cut" matches
    assert lastfm.training_taggers(tagged, training, {"1", "2", "3", "4", "5", "9"}) == {
        "exact", "cut"}


def test_clean_tags_need_the_training_sequences(real_data, names):
    with pytest.raises(lastfm.DataError, match="clean tags need the LLaRA training sequences"):
        lastfm.load_hetrec_items(real_data / "lastfm" / lastfm.HETREC_DIRNAME, names, None)


def test_training_sets_follow_the_empty_history_rows(tmp_path):
    p = tmp_path / "train.jsonl"
    rows = [([], 1), ([1], 2), ([1, 2], 3), ([], 7), ([7], 8)]
    p.write_text("".join(json.dumps({"history_ids": h, "next_id": n}) + "\n" for h, n in rows))
    assert lastfm.read_training_sets(p) == [{"1", "2", "3"}, {"7", "8"}]
