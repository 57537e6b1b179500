"""Hybrid mode's evidence: the models fitted on training interactions, out of fold for training
prompts, the leak check, and reuse by `reclaif eval` on a run's checkpoint."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest

from reclaif.config import EvidenceConfig
from reclaif.data import load_examples, load_items
from reclaif.data.interactions import fit_windows, sequence_windows
from reclaif.errors import DataError
from reclaif.evidence import (EvidenceModels, TransitionRanker, build_evidence, check_no_leak,
                              evidence_of_checkpoint, fold_of)
from reclaif.evidence.folds import unit
from reclaif.records import Example


@pytest.fixture(scope="module")
def sample():
    train = load_examples("sample", "train")
    valid = load_examples("sample", "valid")
    return train, valid, load_items("sample"), fit_windows("sample", "train", train)


@pytest.fixture(scope="module")
def built(sample, tmp_path_factory):
    """Two folds over the windows of the first 200 users (one SASRec epoch each: seconds)."""
    train, valid, items, windows = sample
    users = sorted({w.user for w in windows})[:200]
    small = [w for w in windows if w.user in set(users)]
    prompts = [ex for ex in train if ex.user in set(users)][:12]
    out = tmp_path_factory.mktemp("evidence")
    cfg = EvidenceConfig(mode="hybrid", folds=2, sasrec_max_seconds=0.5)
    return build_evidence(cfg, prompts, valid[:10], small, items, out), prompts, out, small


def test_sasrec_evidence_is_fitted_for_a_count_of_epochs_not_a_time(sample):
    """The same windows and seed give the same model on any machine and under any load: the
    fit runs its configured epochs (no clock in it by default), so two fits score alike."""
    _, valid, items, windows = sample
    users = set(sorted({w.user for w in windows})[:60])
    small = [w for w in windows if w.user in users]
    fits = [EvidenceModels.fit(small, items, ["sasrec"], sasrec_epochs=2, seed=3)
            for _ in range(2)]
    assert [len(m.sasrec.history_log) for m in fits] == [2, 2]
    a, b = (m.sasrec.scores(valid[0]) for m in fits)
    assert list(a) == list(b)


def test_sample_windows_are_the_llara_rows_and_interactions_cover_them(sample):
    train, _, _, windows = sample
    keys = {(w.user, tuple(w.context), w.candidates[0]) for w in windows}
    assert len(windows) == 49_824  # every LLaRA training window (50,800 rows less 976 firsts)
    assert all((ex.user, tuple(ex.context), next(iter(ex.labels))) in keys for ex in train)


def test_interactions_with_a_repeated_user_name_the_line(tmp_path):
    (tmp_path / "examples.jsonl").write_text("")
    rows = [{"user": "u1", "items": ["a", "b"], "split": "train"},
            {"user": "u1", "items": ["c", "d"], "split": "train"}]
    (tmp_path / "interactions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"interactions.jsonl:2: user 'u1' has a second row"):
        fit_windows(tmp_path, "train", [])


def test_transition_counts_distinct_users_and_backs_off():
    w = (sequence_windows("u1", ["a", "b", "c"], "music") + sequence_windows("u2", ["a", "b"], "music")
         + sequence_windows("u1", ["a", "b"], "music"))  # u1 again: still one user for a→b
    t = TransitionRanker()
    t.fit(w, {})
    assert t.count("a", "b") == 2 and t.count("b", "c") == 1 and t.count("c", "a") == 0
    ex = Example("e", "sequential", ["a", "z"], ["c", "b", "q"], {"c": 1.0})
    # last item z is unknown; a (second to last) backs off with weight 1/2: b scores, c does not
    s = t.scores(ex)
    assert s[1] > 0 and s[0] == 0 and s[2] == 0
    assert t.rank(ex)[0] == "b"


def test_every_training_prompt_gets_evidence_from_a_model_that_never_saw_its_user(built):
    ev, prompts, out, _ = built
    for f in (0, 1):
        fitted = set(json.loads((out / f"fold-{f}" / "fit.json").read_text())["users"])
        mine = [p for p in prompts if fold_of(unit(p), 2) == f]
        assert mine and not {p.user for p in mine} & fitted
        # and the fold model did see the other fold's users: it is a real fit
        assert {p.user for p in prompts if fold_of(unit(p), 2) != f} <= fitted
    assert set(json.loads((out / "full" / "fit.json").read_text())["users"]) >= \
        {p.user for p in prompts}


def test_evidence_lines_rank_every_candidate_and_lists_them_best_first(built, sample):
    ev, prompts, _, _ = built
    for ex in ev.train + ev.evaluation:
        assert set(ex.evidence) == set(ex.candidates)
        ranks = [int(re.search(r"SASRec #(\d+)", ex.evidence[c]).group(1)) for c in ex.candidates]
        assert ranks == list(range(1, len(ex.candidates) + 1))  # order: score
        probs = [int(re.search(r"SASRec #\d+(?: (\d+)%)?", ex.evidence[c]).group(1) or 0)
                 for c in ex.candidates]
        assert probs == sorted(probs, reverse=True)
    items = sample[2]
    for ex in ev.evaluation:
        for c in ex.candidates:
            tags = re.search(r"tags: (.*) with .* \(\d\.\d\d\)$", ex.evidence[c])
            if tags:  # only tags the item really has
                assert all(t in items[c].fields["tags"] for t in tags.group(1).split(", "))


def test_evidence_reads_no_labels(built, sample):
    ev, prompts, out, _ = built
    models = EvidenceModels.load(out / "full", sample[2])
    ex = sample[1][0]
    moved = dataclasses.replace(ex, labels={ex.candidates[-1]: 1.0})
    assert models.annotate(ex, sample[2]).evidence == models.annotate(moved, sample[2]).evidence


def test_a_planted_leak_is_an_error(built, sample):
    ev, prompts, out, small = built
    folds = {"fold-0": set(json.loads((out / "fold-0" / "fit.json").read_text())["users"]),
             "full": set()}
    check_no_leak(folds, prompts, [], 2)
    victim = next(p for p in prompts if fold_of(unit(p), 2) == 0)
    folds["fold-0"].add(victim.user)
    with pytest.raises(DataError, match="fold 0's model was fitted on 1 user"):
        check_no_leak(folds, prompts, [], 2)
    # an evaluation user inside the evaluation model's fit
    evaluation = [dataclasses.replace(sample[1][0], user=victim.user)]
    with pytest.raises(DataError, match="evaluation model was fitted on 1 evaluation user"):
        check_no_leak({"full": {victim.user}}, [], evaluation, 2)


def test_build_refuses_a_fit_that_holds_an_evaluation_user(sample, tmp_path):
    train, valid, items, windows = sample
    small = windows[:400]
    evaluation = [dataclasses.replace(valid[0], user=small[0].user)]
    cfg = EvidenceConfig(mode="hybrid", folds=2, sources=["transition"])
    with pytest.raises(DataError, match="evidence leak"):
        build_evidence(cfg, [], evaluation, small, items, tmp_path)


def test_resumed_folds_are_loaded_not_refitted(built, sample, monkeypatch):
    ev, prompts, out, small = built

    def no_fit(*a, **k):
        raise AssertionError("refitted a finished fold")

    monkeypatch.setattr(EvidenceModels, "fit", classmethod(no_fit))
    again = build_evidence(EvidenceConfig(mode="hybrid", folds=2, sasrec_max_seconds=0.5),
                           prompts, sample[1][:10], small, sample[2], out)
    assert [e.evidence for e in again.train] == [e.evidence for e in ev.train]


def test_a_hybrid_runs_checkpoint_reads_its_evidence_at_eval(built, sample, tmp_path,
                                                             repo_root):
    from reclaif.comparison.llm_ranker import LLMRanker
    from reclaif.config_load import load_config
    from reclaif.llm.models import build_tiny_model
    from reclaif.pipeline.store import RunStore

    ev, prompts, out, _ = built
    cfg = load_config(repo_root / "configs" / "quickstart.yaml", ["evidence.mode=hybrid"])
    store = RunStore(tmp_path / "run")
    store.freeze_config(cfg)
    store.mark_done("evidence")
    import shutil

    shutil.copytree(out / "full", store.root / "evidence" / "full")
    ckpt = build_tiny_model(store.checkpoint("iter-001"), tie=False)
    assert evidence_of_checkpoint(ckpt, sample[2]) is not None
    ranker = LLMRanker(f"model:{ckpt}", max_new_tokens=4)
    ranker.fit([], sample[2])
    seen: list[str] = []
    real = ranker._recommender.client.generate

    def spy(prompts, **kw):
        seen.extend(prompts)
        return real(prompts, **kw)

    ranker._recommender.client.generate = spy
    ranker.prepare(sample[1][:2])
    assert len(seen) == 2 and all("[SASRec #1 " in p for p in seen)
    # a names-only run's checkpoint gets the paper's prompt
    names = RunStore(tmp_path / "names")
    names.freeze_config(load_config(repo_root / "configs" / "quickstart.yaml",
                                    ["evidence.mode=none"]))
    names.mark_done("x")
    assert evidence_of_checkpoint(names.checkpoint("iter-001"), sample[2]) is None


def test_recommend_on_a_hybrid_runs_checkpoint_maps_names_and_adds_evidence(built, sample,
                                                                           tmp_path, repo_root):
    import shutil

    from reclaif.config_load import load_config
    from reclaif.pipeline.store import RunStore
    from reclaif.recommender import with_run_evidence

    _, _, out, _ = built
    store = RunStore(tmp_path / "run")
    store.freeze_config(load_config(repo_root / "configs" / "quickstart.yaml",
                                    ["evidence.mode=hybrid"]))
    store.mark_done("evidence")
    shutil.copytree(out / "full", store.root / "evidence" / "full")
    ckpt = store.checkpoint("iter-001")
    items = sample[2]
    ex = sample[1][0]
    names = Example("cli", "sequential", [items[i].title for i in ex.context],
                    [items[c].title.upper() for c in ex.candidates], {}, split="cli")
    got, merged = with_run_evidence(names, {}, str(ckpt))
    assert sorted(got.candidates) == sorted(ex.candidates)  # names → the run's catalog ids
    assert all(got.evidence[c].startswith("SASRec #") for c in got.candidates)


def test_retrieval_evidence_is_bm25_and_needs_no_folds(tmp_path):
    from reclaif.records import Item

    items = {"p1": Item("p1", "red lipstick matte", {"brand": "Acme"}),
             "p2": Item("p2", "blue running shoes", {"brand": "Fast"}),
             "p3": Item("p3", "lipstick set, red and pink", {"brand": "Acme"})}
    ex = Example("q1", "retrieval", "red lipstick", ["p2", "p1", "p3"], {"p1": 1.0},
                 domain="product_search", user=None)
    ev = build_evidence(EvidenceConfig(mode="hybrid"), [ex], [ex], [], items, tmp_path)
    got = ev.evaluation[0]
    assert got.candidates[-1] == "p2" and got.evidence["p2"].startswith("BM25 #3")
    assert not list(tmp_path.glob("fold-*"))  # nothing learned from interactions: one model
    with pytest.raises(Exception, match="do not apply to retrieval"):
        build_evidence(EvidenceConfig(mode="hybrid", sources=["sasrec"]), [ex], [ex], [], items,
                       tmp_path / "x")
