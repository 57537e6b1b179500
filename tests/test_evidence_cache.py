"""Fitted evidence models reused across runs by a hash of their inputs (evidence/cache.py):
the same inputs fit nothing, a changed input refits what it touches, a damaged entry is refit."""
from __future__ import annotations

import dataclasses
import json

import pytest

from reclaif.config import EvidenceConfig
from reclaif.data import load_examples, load_items
from reclaif.data.interactions import fit_windows
from reclaif.evidence import EvidenceModels, build_evidence, evidence_cache, fold_of
from reclaif.evidence.folds import unit

CFG = EvidenceConfig(mode="hybrid", folds=2, sources=["sasrec", "transition"], sasrec_epochs=1)


@pytest.fixture(scope="module")
def sample():
    """The windows of the bundled sample's first 80 users, 6 prompts of theirs, 4 held out."""
    train = load_examples("sample", "train")
    windows = fit_windows("sample", "train", train)
    users = set(sorted({w.user for w in windows})[:80])
    small = [w for w in windows if w.user in users]
    prompts = [ex for ex in train if ex.user in users][:6]
    return prompts, load_examples("sample", "valid")[:4], small, load_items("sample")


@pytest.fixture
def fits(monkeypatch):
    """The names of the model directories fitted (not loaded) during the test."""
    fitted: list[int] = []
    real = EvidenceModels.fit.__func__

    def counting(cls, windows, *a, **k):
        fitted.append(len(windows))
        return real(cls, windows, *a, **k)

    monkeypatch.setattr(EvidenceModels, "fit", classmethod(counting))
    return fitted


def _build(sample, out, cache, cfg=CFG, seed=0, windows=None, items=None):
    prompts, valid, small, catalog = sample
    return build_evidence(cfg, prompts, valid, small if windows is None else windows,
                          catalog if items is None else items, out, seed=seed, cache_root=cache)


def _model_bytes(out):
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted(out.rglob("*")) if p.is_file() and p.parent != out}


def test_a_second_build_on_the_same_inputs_reuses_every_model(sample, tmp_path, fits):
    first = _build(sample, tmp_path / "run1" / "evidence", tmp_path / "cache")
    assert len(fits) == 3  # the evaluation model and two folds
    second = _build(sample, tmp_path / "run2" / "evidence", tmp_path / "cache")
    assert len(fits) == 3  # nothing refitted
    assert [e.evidence for e in second.train] == [e.evidence for e in first.train]
    assert [e.evidence for e in second.evaluation] == [e.evidence for e in first.evaluation]
    # the run directory holds its own copy, byte for byte what the fit wrote
    assert _model_bytes(tmp_path / "run2" / "evidence") == \
        _model_bytes(tmp_path / "run1" / "evidence")


def test_a_changed_input_refits_what_it_touches(sample, tmp_path, fits):
    prompts, valid, small, items = sample
    _build(sample, tmp_path / "a", tmp_path / "cache")
    assert len(fits) == 3
    _build(sample, tmp_path / "b", tmp_path / "cache", seed=1)
    assert len(fits) == 6  # another seed: every model
    # windows of one fold-0 user dropped: the evaluation model and fold 1's (fitted on fold 0's
    # users) miss; fold 0's model never saw them, so it is reused
    gone = next(unit(w) for w in small if fold_of(unit(w), 2) == 0)
    _build(sample, tmp_path / "c", tmp_path / "cache",
           windows=[w for w in small if unit(w) != gone])
    assert len(fits) == 8
    renamed = dict(items)
    some = small[0].context[0]
    renamed[some] = dataclasses.replace(items[some], title=items[some].title + " (live)")
    _build(sample, tmp_path / "d", tmp_path / "cache", items=renamed)
    assert len(fits) == 11  # an item's text: every model
    _build(sample, tmp_path / "e", tmp_path / "cache", cfg=dataclasses.replace(CFG, sasrec_epochs=2))
    assert len(fits) == 14


@pytest.mark.parametrize("damage", ["model-bytes", "entry-json", "loads-not"])
def test_a_damaged_entry_is_refitted_not_trusted(sample, tmp_path, fits, damage):
    cache = tmp_path / "cache"
    first = _build(sample, tmp_path / "a", cache)
    entries = sorted(p.parent for p in cache.rglob("entry.json"))
    assert len(entries) == 3 and len(fits) == 3
    victim = next(e for e in entries if (e / "sasrec.pt").is_file())
    if damage == "model-bytes":
        data = bytearray((victim / "sasrec.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (victim / "sasrec.pt").write_bytes(bytes(data))
    elif damage == "entry-json":
        (victim / "entry.json").write_text('{"files": {')
    else:  # hashes that match files that do not load
        (victim / "sasrec.pt").write_bytes(b"not a checkpoint")
        meta = json.loads((victim / "entry.json").read_text())
        import hashlib
        meta["files"]["sasrec.pt"] = hashlib.sha256(b"not a checkpoint").hexdigest()
        (victim / "entry.json").write_text(json.dumps(meta))
    second = _build(sample, tmp_path / "b", cache)
    assert len(fits) == 4  # the damaged one refitted, the other two reused
    assert [e.evidence for e in second.evaluation] == [e.evidence for e in first.evaluation]
    assert [e.evidence for e in second.train] == [e.evidence for e in first.train]
    # and replaced by a good entry: a third build fits nothing
    _build(sample, tmp_path / "c", cache)
    assert len(fits) == 4


def test_the_cache_directory_comes_from_config_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RECLAIF_EVIDENCE_CACHE", str(tmp_path / "env"))
    assert evidence_cache(EvidenceConfig()) == tmp_path / "env"
    assert evidence_cache(EvidenceConfig(cache_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    assert evidence_cache(EvidenceConfig(cache_dir="off")) is None
    monkeypatch.delenv("RECLAIF_EVIDENCE_CACHE")
    monkeypatch.setenv("RECLAIF_CACHE", str(tmp_path / "all"))
    assert evidence_cache(EvidenceConfig()) == tmp_path / "all" / "evidence"


def test_a_fit_on_another_device_is_its_own_entry():
    """evidence.device: a GPU's fit draws other negatives and sums in another order, so a CPU
    run never reuses it (nor the reverse); cpu, the default, keeps the keys it always had."""
    from reclaif.evidence.cache import fit_key

    keys = {d: fit_key([], "items", ["sasrec"], EvidenceConfig(device=d), 0)
            for d in ("cpu", "auto", "cuda")}
    assert len(set(keys.values())) == 3
