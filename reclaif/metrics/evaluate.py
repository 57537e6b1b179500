"""Scoring rankings against labels, and `reclaif eval --predictions FILE`.

Every metric reports its mean and its count (how many examples it averages), plus the
per-example values for bootstrap confidence intervals. An invalid or missing answer is a miss
(0) for relevance and counts against ValidRatio; diversity averages only the valid answers with
at least two items; explainability averages the scores given.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from reclaif.atomic import iter_jsonl
from reclaif.errors import ConfigError, DataError
from reclaif.metrics.diversity import DiversityScorer
from reclaif.metrics.relevance import hit_at_k, mrr, ndcg_at_k, precision_at_k
from reclaif.metrics.validity import valid_ratio
from reclaif.records import Example, Item
from reclaif.data import load_examples, load_items, resolve_data_dir
from reclaif.parsing import is_valid, parse_recommendation

log = logging.getLogger(__name__)

TASK_TOP_K = {"sequential": 3, "retrieval": 5}  # the paper: top-3 (LastFM, Beauty), 5 (ESCI)


def evaluate_rankings(examples: list[Example], rankings: dict[str, list[str]],
                      valid: dict[str, bool] | None, items: dict[str, Item], ks: list[int],
                      diversity: DiversityScorer | None,
                      explainability: dict[str, float] | None = None,
                      diversity_k: int | None = None) -> dict[str, Any]:
    """Means and counts of Prec/NDCG(graded and binary)/Hit@K, MRR, ValidRatio, diversity and
    explainability over `examples`.

    rankings: example id → ranked item ids; an example without one is a miss (n_missing).
    valid: example id → validity (`is_valid`); None treats every given ranking as valid.
    diversity: scored on the first `diversity_k` items (default max(ks)) of valid answers.
    Returns {"n_examples", "n_missing", "ks", "metrics": {name: {"mean", "count"}},
    "per_example": {"ids": [...], name: [value or None, ...]}}.
    """
    ks = sorted(set(ks))
    if not ks or ks[0] <= 0:
        raise ConfigError(f"eval: cut-offs must be positive integers, got {ks}")
    div_k = diversity_k or ks[-1]
    names = [f"{m}@{k}" for k in ks for m in ("precision", "ndcg", "ndcg_binary", "hit")]
    per: dict[str, list[Any]] = {n: [] for n in ["ids", *names, "mrr", "valid", "diversity",
                                                 "explainability"]}
    if diversity is not None:
        diversity.prefetch([i for ex in examples if (valid or {}).get(ex.id, True)
                            for i in rankings.get(ex.id, [])[:div_k]])
    for ex in examples:
        given = ex.id in rankings
        ok = given and (valid.get(ex.id, False) if valid is not None else True)
        ranked = list(rankings[ex.id]) if ok else []
        per["ids"].append(ex.id)
        for k in ks:
            per[f"precision@{k}"].append(precision_at_k(ranked, ex.labels, k))
            per[f"ndcg@{k}"].append(ndcg_at_k(ranked, ex.labels, k, graded=True))
            per[f"ndcg_binary@{k}"].append(ndcg_at_k(ranked, ex.labels, k, graded=False))
            per[f"hit@{k}"].append(hit_at_k(ranked, ex.labels, k))
        per["mrr"].append(mrr(ranked, ex.labels))
        per["valid"].append(ok)
        per["diversity"].append(diversity.score(ranked[:div_k])
                                if diversity is not None and ok else None)
        score = (explainability or {}).get(ex.id)
        per["explainability"].append(float(score) if score is not None else None)
    metrics: dict[str, dict[str, float | int | None]] = {}
    for name in [*names, "mrr", "diversity", "explainability"]:
        values = [v for v in per[name] if v is not None]
        metrics[name] = {"mean": float(np.mean(values)) if values else None, "count": len(values)}
    metrics["valid_ratio"] = {"mean": valid_ratio(per["valid"]) if examples else None,
                              "count": len(examples)}
    return {"n_examples": len(examples), "n_missing": sum(ex.id not in rankings for ex in examples),
            "ks": ks, "diversity_k": div_k, "metrics": metrics, "per_example": per}


def bootstrap_ci(values: list[float], resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean; None with no values or no resamples.

    numpy rather than scipy.stats.bootstrap, which refuses a sample of one value (a tiny eval
    split) and is not a declared dependency.
    """
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0 or resamples <= 0:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_bootstrap_ci(a: list[float], b: list[float], resamples: int = 1000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float, float] | None:
    """Mean of a − b over the same examples and its percentile interval, the examples resampled
    together (a paired test: the example-to-example spread both share cancels)."""
    if len(a) != len(b) or not a or resamples <= 0:
        return None
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


def read_predictions(path: str | Path, known: dict[str, Example]) -> dict[str, dict[str, Any]]:
    """Prediction rows by example id; each error names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: predictions file not found")
    out: dict[str, dict[str, Any]] = {}
    for n, row in iter_jsonl(path):
        if not isinstance(row, dict) or "id" not in row:
            raise DataError(f"{path}:{n}: a prediction is an object with an 'id'")
        pid = str(row["id"])
        if pid not in known:
            raise DataError(f"{path}:{n}: prediction id {pid!r} is not among the "
                            f"{len(known)} examples")
        if pid in out:
            raise DataError(f"{path}:{n}: second prediction for id {pid!r}")
        has_items = isinstance(row.get("items"), list)
        if not has_items and not isinstance(row.get("text"), str):
            raise DataError(f"{path}:{n}: give 'items' (a list of item ids) or 'text' "
                            f"(the raw answer) for id {pid!r}")
        if has_items and not all(isinstance(i, (str, int)) for i in row["items"]):
            raise DataError(f"{path}:{n}: 'items' of id {pid!r} must be item ids")
        score = row.get("explainability")
        # json.loads reads NaN, Infinity and 400-digit integers (float() of those overflows);
        # a mean over them would be NaN in eval.json. Scores are 0-100.
        if isinstance(score, (int, float)) and not isinstance(score, bool) and not (
                -1e6 < score < 1e6):
            shown = score if isinstance(score, float) else f"a {len(str(score))}-digit number"
            raise DataError(f"{path}:{n}: 'explainability' of id {pid!r} is {shown}; give "
                            "a finite number (the scores are 0-100) or leave it out")
        out[pid] = row
    return out


def _load_items_if_any(path: str | Path) -> dict[str, Item]:
    p = resolve_data_dir(path)
    catalog = (p.parent if p.is_file() else p) / "items.jsonl"
    return load_items(p) if catalog.exists() else {}


def score_predictions(examples_path: str | Path, predictions_path: str | Path, ks: list[int],
                      split: str | None = None, limit: int = 0, top_k: int | None = None,
                      diversity: bool = True, resamples: int = 0) -> dict[str, Any]:
    """A predictions file scored on a dataset: the evaluate_rankings result with a `ci95` per
    metric. `split` keeps one split, `limit` its first N examples; `top_k` is the items an
    answer must rank (default: the task's, TASK_TOP_K)."""

    everything = load_examples(examples_path)
    known = {ex.id: ex for ex in everything}
    rows = read_predictions(predictions_path, known)
    examples = [ex for ex in everything if not split or ex.split == split]
    if limit:
        examples = examples[:limit]
    if not examples:
        raise DataError(f"{examples_path}: no examples to evaluate"
                        + (f" in split {split!r}" if split else ""))
    items = _load_items_if_any(examples_path)
    rankings: dict[str, list[str]] = {}
    valid: dict[str, bool] = {}
    explain: dict[str, float] = {}
    for ex in examples:
        row = rows.get(ex.id)
        if row is None:
            continue
        k = top_k or TASK_TOP_K.get(ex.task, 3)
        if isinstance(row.get("items"), list):
            ranked = [str(i) for i in row["items"]]
            valid[ex.id] = is_valid(ranked, ex.candidates, k)
        else:
            rec = parse_recommendation(row["text"], ex, items, k)
            ranked, valid[ex.id] = rec.items, rec.valid
        rankings[ex.id] = ranked
        if isinstance(row.get("explainability"), (int, float)):
            explain[ex.id] = float(row["explainability"])
    tasks = {ex.task for ex in examples}
    div_k = top_k or (TASK_TOP_K.get(tasks.pop(), 3) if len(tasks) == 1 else None)
    scorer = DiversityScorer(items) if diversity else None
    result = evaluate_rankings(examples, rankings, valid, items, ks, scorer, explain or None,
                               diversity_k=div_k)
    for name, m in result["metrics"].items():
        values = result["per_example"]["valid" if name == "valid_ratio" else name]
        ci = bootstrap_ci([float(v) for v in values if v is not None], resamples)
        m["ci95"] = list(ci) if ci else None
    result.update(examples=str(examples_path), predictions=str(predictions_path))
    return result
