"""Rebuilds tests/data/ (the real data the tests read) from the full files in ../shared/data.

    python tests/make_test_data.py [--data ../shared/data] [--out tests/data]

Rows are kept unchanged and in file order; no random draw is made, so the output depends on the
source files alone, and gzip is written without a timestamp: the same sources give
byte-identical files (tests/test_data_subsets.py checks where ../shared/data is present).
What is kept and why: tests/data/SOURCE.md.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path

from reclaif.data import lastfm

REPO = Path(__file__).resolve().parents[1]
SDPO_FIRST = 300  # the tests read at most the first 300 prompts (tests/test_baselines.py)
# Two S-DPO prompts whose history and target a LLaRA training row repeats: the chance duplicates
# the held-out check must exclude (README, "Held-out discipline"). At most 1% of the prompts
# (3 of 302) may be such repeats, or the check calls the splits overlapping.
SDPO_REPEATS = (2321, 2322)
LLARA_TRAIN_USERS = 60  # the first 60 users' rows (3,000+ rows: tests read up to 2,400)
MORCHEEBA = "0"  # LLaRA id 0, whose tags tests check by name


def _gzip(data: bytes, out: Path) -> None:
    """gzip without a name or timestamp in the header: reproducible bytes."""
    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                               compresslevel=9) as f:
        f.write(data)


def _llara_users(path: Path) -> list[list[str]]:
    """The lines of a LLaRA file grouped by user (a new user at each empty history, as the
    loader numbers them)."""
    users: list[list[str]] = []
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        for line in f:
            if not line.strip():
                continue
            if not json.loads(line)["history_ids"] or not users:
                users.append([])
            users[-1].append(line)
    return users


def _sdpo_rows(src: Path, names: dict[str, str]) -> tuple[list[dict], set[str]]:
    rows = json.loads(src.read_text(encoding="utf-8"))
    keep = rows[:SDPO_FIRST] + [rows[i] for i in SDPO_REPEATS]
    index = lastfm.NameIndex(names)
    used = {index.get(n) for r in keep
            for n in r["historyList"].split("::") + r["itemList"] + [r["trueSelection"]]}
    return keep, used


def _repeat_users(users: list[list[str]], rows: list[dict],
                  names: dict[str, str]) -> list[int]:
    """Indices of the training users with a row whose history and target equal a prompt's."""
    index = lastfm.NameIndex(names)
    wanted = {(tuple(index.get(h) for h in r["historyList"].split("::")),
               index.get(r["trueSelection"])) for r in rows}
    out = []
    for u, lines in enumerate(users):
        for line in lines:
            row = json.loads(line)
            if (tuple(str(i) for i in row["history_ids"]), str(row["next_id"])) in wanted:
                out.append(u)
                break
    return out


def _lines(path: Path) -> list[bytes]:
    """A file's lines as bytes, each with its line break (HetRec: LF only)."""
    return path.read_bytes().splitlines(keepends=True)


def _hetrec(src: Path, out: Path, names: dict[str, str], used: set[str]) -> dict[str, int]:
    """artists.dat rows whose name maps to a used LLaRA artist, every user_taggedartists row of
    those artists (so their top-5 tags are the full release's), the tags.dat rows those use.
    Lines are copied as bytes: tags.dat is Latin-1, the others UTF-8."""
    index = lastfm.NameIndex(names)
    head, *lines = _lines(src / "artists.dat")
    artists = [ln for ln in lines if index.get(ln.split(b"\t")[1].decode("utf-8")) in used]
    ids = {ln.split(b"\t")[0] for ln in artists}
    thead, *tlines = _lines(src / "user_taggedartists.dat")
    tagged = [ln for ln in tlines if ln.split(b"\t")[1] in ids]
    tag_ids = {ln.split(b"\t")[2] for ln in tagged}
    ghead, *glines = _lines(src / "tags.dat")
    tags = [ln for ln in glines if ln.split(b"\t")[0] in tag_ids]
    out.mkdir(parents=True)
    for name, first, rest in (("artists.dat", head, artists), ("tags.dat", ghead, tags),
                              ("user_taggedartists.dat", thead, tagged)):
        _gzip(first + b"".join(rest), out / f"{name}.gz")
    shutil.copy(src / "readme.txt", out / "readme.txt")
    return {"artists": len(artists), "tag_assignments": len(tagged), "tags": len(tags),
            "non_ascii_tags": sum(any(b > 127 for b in ln) for ln in tags)}


def make_test_data(data: Path, out: Path) -> dict:
    """Writes lastfm/, beauty/ and esci/ into `out` (replacing those three folders; SOURCE.md
    stays); returns what it kept."""
    for sub in ("lastfm", "beauty", "esci"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    lf, olf = data / "lastfm", out / "lastfm"
    (olf / "llara").mkdir(parents=True)
    (olf / "sdpo").mkdir()
    names = lastfm.read_id2name(lf / "llara" / "id2name.txt")
    shutil.copy(lf / "llara" / "id2name.txt", olf / "llara" / "id2name.txt")
    shutil.copy(lf / "llara" / "val.jsonl.gz", olf / "llara" / "val.jsonl.gz")

    rows, used = _sdpo_rows(lf / "sdpo" / "lastfm-val.json", names)
    # indent=4 is the release's own layout: the kept rows read as they do in the full file.
    (olf / "sdpo" / "lastfm-val.json").write_text(json.dumps(rows, indent=4), encoding="utf-8")

    users = _llara_users(lf / "llara" / "train.jsonl.gz")
    repeats = _repeat_users(users, rows[SDPO_FIRST:], names)
    keep = list(range(LLARA_TRAIN_USERS)) + [u for u in repeats if u >= LLARA_TRAIN_USERS]
    lines = [ln for u in keep for ln in users[u]]
    _gzip("".join(lines).encode("utf-8"), olf / "llara" / "train.jsonl.gz")

    hetrec = _hetrec(lf / lastfm.HETREC_DIRNAME, olf / lastfm.HETREC_DIRNAME, names,
                     used | {MORCHEEBA})

    (out / "beauty").mkdir()
    for name in ("All_Beauty.train.csv.gz", "All_Beauty.valid.csv.gz",
                 "meta_All_Beauty_5core_items.csv"):
        shutil.copy(data / "beauty" / name, out / "beauty" / name)
    (out / "esci").mkdir()
    for name in ("esci_sample200.csv", "esci_us_judgments.json"):
        _gzip((data / "esci" / name).read_bytes(), out / "esci" / f"{name}.gz")
    shutil.copy(data / "esci" / "LICENSE_opensearch-devops.txt",
                out / "esci" / "LICENSE_opensearch-devops.txt")
    return {"sdpo_prompts": len(rows), "sdpo_artists": len(used),
            "llara_train_users": [f"u{u}" for u in keep if u >= LLARA_TRAIN_USERS],
            "llara_train_rows": len(lines), "hetrec": hetrec}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default=str(REPO / "tests" / "data"))
    a = p.parse_args(argv)
    print(make_test_data(Path(a.data), Path(a.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
