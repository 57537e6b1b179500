"""LastFM (HetRec 2011) as LLaRA / S-DPO release it → sequential `Example`s with 20 candidates.

Two sources (README of shared/data/lastfm):
- the S-DPO validation prompts (`lastfm-val.json`): names, with their FIXED 20 candidates;
- the LLaRA sequence files (`train.jsonl.gz`, `val.jsonl.gz`): ids; the 20 candidates are the
  target plus 19 artists sampled per row (not in the history, not the target), as S-DPO did.
Artist ids are LLaRA's (`id2name.txt`); item text is the artist's top HetRec tags.
"""
from __future__ import annotations

import csv
import json
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reclaif.data import Loaded, open_text, row_rng
from reclaif.errors import DataError
from reclaif.records import Example, Item

N_CANDIDATES = 20
TOP_TAGS = 5
HETREC_DIRNAME = "hetrec2011-lastfm-2k"
TRAIN_FILE = "train.jsonl.gz"  # LLaRA's training split: whose tagging clean tags may use


def read_id2name(path: str | Path) -> dict[str, str]:
    """LLaRA `id2name.txt` (`id::name` per line) → {id: name}; an id repeated with another name is an error."""
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    try:
        with open_text(path) as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line:
                    continue
                iid, sep, name = line.partition("::")
                if not sep or not iid.strip().isdigit() or not name:
                    raise DataError(f"{path}:{n}: expected 'id::name', got {line[:80]!r}")
                if iid.strip() in first and out[iid.strip()] != name:
                    # A later line silently replacing an earlier name would relabel an artist.
                    raise DataError(f"{path}:{n}: id {iid.strip()} repeats line "
                                    f"{first[iid.strip()]} with another name; each id must "
                                    "appear once")
                first.setdefault(iid.strip(), n)
                out[iid.strip()] = name
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason})") from None
    if not out:
        raise DataError(f"{path}: no 'id::name' lines")
    return out


class NameIndex:
    """Artist name → LLaRA id: exact first, then case-insensitive (releases differ in case)."""

    def __init__(self, id2name: dict[str, str]):
        self.exact = {name: iid for iid, name in id2name.items()}
        self.folded: dict[str, str] = {}
        for iid, name in id2name.items():
            self.folded.setdefault(name.casefold(), iid)

    def get(self, name: str) -> str | None:
        return self.exact.get(name) or self.folded.get(name.casefold())


def _read_tsv(path: Path, encoding: str, columns: int) -> Iterator[tuple[int, list[str]]]:
    """Rows of a HetRec tab-separated file after its header, each with its line number."""
    try:
        with open_text(path, encoding) as f:
            for n, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
                if n == 1 or not row:
                    continue
                if len(row) < columns:
                    raise DataError(f"{path}:{n}: expected {columns} tab-separated fields, "
                                    f"got {len(row)}")
                yield n, row
    except (UnicodeDecodeError, csv.Error, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: unreadable ({e})") from None


def _hetrec_file(d: Path, name: str) -> Path:
    """`name` in the HetRec directory, or `name.gz` where only that exists (tests/data)."""
    gz = d / f"{name}.gz"
    return gz if not (d / name).is_file() and gz.is_file() else d / name


def read_training_sets(path: str | Path) -> list[set[str]]:
    """Each LLaRA training user's artists, from the sequence file: a user starts at a row with an
    empty history (as `load_llara` numbers them) and every row adds its next_id."""
    users: list[set[str]] = []
    try:
        with open_text(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    hist, nxt = row["history_ids"], row["next_id"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise DataError(f"{path}:{n}: not a LLaRA row ({e!r})") from None
                if not hist or not users:
                    users.append(set())
                users[-1].update(str(i) for i in [*hist, nxt])
    except (UnicodeDecodeError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    return users


@dataclass
class TagProvenance:
    """Whose tagging the catalog's tags were built from (docs/ARCHITECTURE.md, "Clean tags")."""

    users: int = 0               # HetRec users with at least one tag assignment
    users_kept: int = 0          # identified as LLaRA training users
    assignments_kept: int = 0
    assignments_dropped: int = 0
    artists_untagged: int = 0    # LLaRA artists left without any tag
    all_users: bool = False      # the leaky build, for the side-by-side table only


def training_taggers(tagged: dict[str, set[str]], training: list[set[str]],
                     known: set[str]) -> set[str]:
    """The HetRec users whose tagging is a LLaRA training user's sequence: the LLaRA artists they
    tagged are exactly one training user's artists (both cut to `known`, the artists the HetRec
    files name, so a subset of the files gives the same answer). The LLaRA sequences ARE HetRec
    tagging sequences; mere containment is not enough: heavy taggers contain short sequences by
    chance, 37 of them a validation user's too (docs/ARCHITECTURE.md, "Clean tags")."""
    by_set: dict[frozenset[str], None] = {}
    for seq in training:
        cut = frozenset(seq & known)
        if cut:
            by_set[cut] = None
    return {u for u, arts in tagged.items() if arts and frozenset(arts) in by_set}


def load_hetrec_items(hetrec_dir: str | Path, id2name: dict[str, str],
                      train_sequences: str | Path | None, *, all_users: bool = False
                      ) -> dict[str, Item]:
    """`hetrec_catalog`'s items (the catalog every consumer reads)."""
    return hetrec_catalog(hetrec_dir, id2name, train_sequences, all_users=all_users)[0]


def hetrec_catalog(hetrec_dir: str | Path, id2name: dict[str, str],
                   train_sequences: str | Path | None, *, all_users: bool = False
                   ) -> tuple[dict[str, Item], TagProvenance]:
    """Catalog of every LLaRA artist: title = its name, fields = {"tags": top-5 clean tags}.

    Clean tags come only from the tagging of HetRec users identified as LLaRA training users
    (`training_taggers`, read from `train_sequences`): the LLaRA/S-DPO prompts are HetRec tagging
    sequences, so tags aggregated over every user would carry an evaluated user's own tags on
    their target. `all_users=True` builds those leaky tags: for the clean/leaky table of
    docs/RESULTS.md only; no config reaches it. `provenance`, when given, is filled with what
    the rule kept and dropped.

    HetRec artists are matched by name (exact, then case-insensitive); an artist without a match
    or without tags gets tags "". tags.dat is Latin-1 (the HetRec release), the rest UTF-8.
    Each file may also be gzipped (`artists.dat.gz`, ...).
    """
    if train_sequences is None and not all_users:
        raise DataError(f"{hetrec_dir}: clean tags need the LLaRA training sequences "
                        "(llara/train.jsonl.gz) to tell training users' tagging from "
                        "evaluated users'")
    d = Path(hetrec_dir)
    index = NameIndex(id2name)
    hetrec_to_llara = {}
    for _, row in _read_tsv(_hetrec_file(d, "artists.dat"), "utf-8", 2):
        iid = index.get(row[1])
        if iid is not None:
            hetrec_to_llara[row[0]] = iid
    tag_names = {row[0]: row[1]
                 for _, row in _read_tsv(_hetrec_file(d, "tags.dat"), "latin-1", 2)}
    events: list[tuple[str, str, str]] = []  # (user, LLaRA artist, tag)
    users: set[str] = set()
    path = _hetrec_file(d, "user_taggedartists.dat")
    for n, row in _read_tsv(path, "utf-8", 3):
        users.add(row[0])
        iid = hetrec_to_llara.get(row[1])
        if iid is None:
            continue
        if row[2] not in tag_names:
            raise DataError(f"{path}:{n}: tagID {row[2]!r} is not in tags.dat")
        events.append((row[0], iid, tag_names[row[2]]))
    if all_users:
        kept = users
    else:
        tagged: dict[str, set[str]] = {}
        for user, iid, _ in events:
            tagged.setdefault(user, set()).add(iid)
        kept = training_taggers(tagged, read_training_sets(train_sequences),
                                set(hetrec_to_llara.values()))
    counts: dict[str, Counter] = {}
    n_kept = 0
    for user, iid, tag in events:
        if user in kept:
            counts.setdefault(iid, Counter())[tag] += 1
            n_kept += 1
    items = {}
    for iid, name in id2name.items():
        # Most used first; ties by name so the text is the same on every run.
        top = sorted(counts.get(iid, Counter()).items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_TAGS]
        items[iid] = Item(id=iid, title=name, fields={"tags": ", ".join(t for t, _ in top)})
    return items, TagProvenance(
        users=len(users), users_kept=len(kept & users), assignments_kept=n_kept,
        assignments_dropped=len(events) - n_kept,
        artists_untagged=sum(not it.fields["tags"] for it in items.values()), all_users=all_users)


def _catalog(id2name: dict[str, str], hetrec_dir: str | Path | None,
             train_sequences: Path | None) -> dict[str, Item]:
    if hetrec_dir is None:
        return {i: Item(id=i, title=n, fields={"tags": ""}) for i, n in id2name.items()}
    return load_hetrec_items(hetrec_dir, id2name, train_sequences)


def load_sdpo(path: str | Path, id2name: dict[str, str], split: str = "valid",
              limit: int = 0) -> list[Example]:
    """S-DPO prompts ({historyList 'a::b', itemList [20 names], trueSelection}) → Examples."""
    path = Path(path)
    try:
        with open_text(path) as f:
            rows = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of prompts, got {type(rows).__name__}")
    index = NameIndex(id2name)
    out = []
    for n, row in enumerate(rows):
        where = f"{path}: row {n}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object, got {type(row).__name__}")
        for key in ("historyList", "itemList", "trueSelection"):
            if key not in row:
                raise DataError(f"{where}: missing field {key!r}")
        hist = row["historyList"]
        if isinstance(hist, str):
            hist = [h for h in hist.split("::") if h]
        names = row["itemList"]
        true = row["trueSelection"]
        if (not isinstance(hist, list) or not isinstance(names, list) or not isinstance(true, str)
                or not all(isinstance(x, str) for x in hist + names)):
            raise DataError(f"{where}: historyList/itemList must be names, trueSelection a name")

        def to_id(name: str, key: str) -> str:
            iid = index.get(name)
            if iid is None:
                raise DataError(f"{where}: {key} name {name!r} is not in id2name.txt")
            return iid

        cands = [to_id(x, "itemList") for x in names]
        if len(set(cands)) != N_CANDIDATES:
            raise DataError(f"{where}: itemList has {len(set(cands))} distinct artists, "
                            f"expected {N_CANDIDATES}")
        target = to_id(true, "trueSelection")
        if target not in cands:
            raise DataError(f"{where}: trueSelection {true!r} is not among the "
                            f"{N_CANDIDATES} candidates")
        if not hist:
            raise DataError(f"{where}: empty historyList")
        out.append(Example(id=f"lastfm:sdpo-{split}:{n}", task="sequential",
                           context=[to_id(h, "historyList") for h in hist], candidates=cands,
                           labels={target: 1.0}, split=split, domain="music"))
        if limit and len(out) >= limit:
            break
    return out


def _int_ids(value: Any, where: str, key: str, id2name: dict[str, str]) -> list[str]:
    vals = value if key == "history_ids" else [value]
    if not isinstance(vals, list) or not all(type(v) is int for v in vals):  # bool is no id
        raise DataError(f"{where}: field {key!r} must hold integer artist ids")
    ids = [str(v) for v in vals]
    for i in ids:
        if i not in id2name:
            raise DataError(f"{where}: field {key!r}: artist id {i} is not in id2name.txt")
    return ids


def load_llara(path: str | Path, id2name: dict[str, str], split: str, seed: int = 0,
               limit: int = 0) -> tuple[list[Example], dict[str, int]]:
    """LLaRA rows ({history_ids, next_id, ...}, one JSON a line) → Examples with 19 sampled
    negatives each. Users are numbered by their first row (every user's first row has an empty
    history); those rows have nothing to condition on and are skipped and counted."""
    path = Path(path)
    catalog = sorted(id2name, key=int)
    out: list[Example] = []
    skipped = {"empty_history": 0}
    user = -1
    # A per-file tag keeps ids unique when several LLaRA files are prepared together.
    tag = f"llara-{split}"
    try:
        with open_text(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{n}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{where}: expected an object")
                for key in ("history_ids", "next_id"):
                    if key not in row:
                        raise DataError(f"{where}: missing field {key!r}")
                hist = _int_ids(row["history_ids"], where, "history_ids", id2name)
                target = _int_ids(row["next_id"], where, "next_id", id2name)[0]
                if not hist:
                    user += 1
                    skipped["empty_history"] += 1
                    continue
                excluded = set(hist) | {target}
                if len(catalog) - len(excluded) < N_CANDIDATES - 1:
                    raise DataError(f"{where}: candidate set too small: {len(catalog)} artists "
                                    f"in id2name.txt, need {N_CANDIDATES - 1} outside the history")
                rng = row_rng(seed, f"{tag}:{n}")
                # Draws come out in random order, so inserting the target at a random place
                # gives a uniform shuffle; rejection is cheap (the history is ~0.2% of artists).
                picked: dict[str, None] = {}
                while len(picked) < N_CANDIDATES - 1:
                    c = catalog[rng.randrange(len(catalog))]
                    if c not in excluded:
                        picked[c] = None
                cands = list(picked)
                cands.insert(rng.randrange(N_CANDIDATES), target)
                out.append(Example(id=f"lastfm:{tag}:{n}", task="sequential", context=hist,
                                   candidates=cands, labels={target: 1.0}, split=split,
                                   domain="music", user=f"{tag}-u{max(user, 0)}"))
                if limit and len(out) >= limit:
                    break
    except (UnicodeDecodeError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    return out, skipped


def _split_from_name(path: Path) -> str:
    name = path.name.lower()
    for key, split in (("train", "train"), ("val", "valid"), ("test", "test")):
        if key in name:
            return split
    raise DataError(f"{path}: cannot tell the split from the file name; name the split (split)")


def load(source: str | Path, items: str | Path | None = None, id2name: str | Path | None = None,
         split: str | None = None, seed: int = 0, limit: int = 0) -> Loaded:
    """S-DPO json (fixed candidates) or LLaRA jsonl(.gz) (seeded candidates) → Loaded.

    id2name defaults to `id2name.txt` beside the source or in a sibling `llara/`; items (the HetRec
    directory) defaults to a sibling `hetrec2011-lastfm-2k/`; without it, tags are empty. Tags are
    clean (`hetrec_catalog`): they need LLaRA's train.jsonl.gz beside the source or in ../llara/.
    """
    source = Path(source)
    if not source.is_file():
        raise DataError(f"{source}: file not found")
    if id2name is None:
        for cand in (source.parent / "id2name.txt", source.parent.parent / "llara" / "id2name.txt"):
            if cand.is_file():
                id2name = cand
                break
        else:
            raise DataError(f"{source}: no id2name.txt beside it or in ../llara/; give its path "
                            "(id2name)")
    names = read_id2name(id2name)
    if items is None and (source.parent.parent / HETREC_DIRNAME).is_dir():
        items = source.parent.parent / HETREC_DIRNAME
    if source.name.endswith((".json", ".json.gz")):
        examples = load_sdpo(source, names, split or "valid", limit)
        skipped: dict[str, int] = {}
    else:
        examples, skipped = load_llara(source, names, split or _split_from_name(source), seed,
                                       limit)
    train = next((p for p in (source.parent / TRAIN_FILE,
                              source.parent.parent / "llara" / TRAIN_FILE) if p.is_file()), None)
    return Loaded(examples=examples, items=_catalog(names, items, train), skipped=skipped)
