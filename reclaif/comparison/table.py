"""`reclaif eval --methods ... [--run DIR]`: the paper's Table 2 (retrieval) or Table 3
(sequential) layout, as markdown on stdout and JSON (--out).

Every row is scored by `metrics.evaluate.evaluate_rankings` on the same evaluation examples;
each relevance, validity and diversity figure carries a 95% percentile-bootstrap interval over
examples (seeded). '-' marks a metric that does not apply, as in the paper: explainability for
methods that write no explanation.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reclaif.comparison.methods import is_learned, make_ranker
from reclaif.data.heldout import check_held_out
from reclaif.data.interactions import fit_windows
from reclaif.errors import DataError, ReclaifError
from reclaif.parsing import is_valid
from reclaif.records import Example, Item
from reclaif.run_layout import BASE, ITERATION_GLOB, SFT, iteration_dirs, iteration_of
from reclaif.config import ExplainabilityConfig
from reclaif.data import load_examples, load_items
from reclaif.judge import make_explainability_scorer
from reclaif.metrics.diversity import DiversityScorer
from reclaif.metrics.evaluate import bootstrap_ci, evaluate_rankings

log = logging.getLogger(__name__)

# (column header, evaluate_rankings metric key), per the paper's tables
COLUMNS = {
    "retrieval": [("Prec@5", "precision@5"), ("NDCG@5", "ndcg@5"), ("Diversity", "diversity"),
                  ("Expl.", "explainability")],
    "sequential": [("ValidRatio", "valid_ratio"), ("Hit@1", "hit@1"), ("NDCG@3", "ndcg@3"),
                   ("Diversity", "diversity"), ("Expl.", "explainability")],
}
NEEDED_KS = {"retrieval": [5], "sequential": [1, 3]}
TOP_K = {"retrieval": 5, "sequential": 3}  # items an answer holds; diversity is over these
TABLE = {"retrieval": "Table 2", "sequential": "Table 3"}


def group_of(method: str) -> str:
    if method.startswith(("llm:", "model:")):
        return "LLM-based"
    if method in ("random", "popularity"):
        return "Floor"
    if method.startswith("sasrec") or method == "transition":
        return "Traditional"
    return "Retrieval-based"


def with_ci(result: dict[str, Any], resamples: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """The metrics of an evaluate_rankings result, each with `ci95` from its per-example values
    (None where the result carries none, e.g. an eval.json without per-example values)."""

    per = result.get("per_example") or {}
    out = {}
    for name, m in result.get("metrics", {}).items():
        values = per.get("valid" if name == "valid_ratio" else name)
        ci = None
        if values is not None:
            ci = bootstrap_ci([float(v) for v in values if v is not None], resamples, seed)
        out[name] = {"mean": m.get("mean"), "count": m.get("count"),
                     "ci95": list(ci) if ci else None}
    return out


def score_method(method: str, examples: list[Example], train: list[Example],
                 items: dict[str, Item], ks: list[int], scorer: Any, resamples: int,
                 seed: int = 0, max_new_tokens: int = 256) -> dict[str, Any]:
    """Fits one method, ranks every example, scores the rankings; returns one table row."""

    task = examples[0].task
    ranker = make_ranker(method, seed=seed, top_k=TOP_K[task], diversity=scorer,
                         max_new_tokens=max_new_tokens)
    t0 = time.perf_counter()
    ranker.fit(train if is_learned(method) else [], items)
    t1 = time.perf_counter()
    ranker.prepare(examples)
    # Every row answers with the top-k it would show, and passes the one validity rule.
    rankings = {ex.id: ranker.rank(ex)[:TOP_K[task]] for ex in examples}
    t2 = time.perf_counter()
    valid = {ex.id: is_valid(rankings[ex.id], ex.candidates, TOP_K[task]) for ex in examples}
    explain = None
    answers = {ex.id: ranker.answer(ex) for ex in examples}
    if all(a is not None for a in answers.values()):  # an LLM: its own validity, explanations

        valid = {i: a.valid for i, a in answers.items()}
        expl = make_explainability_scorer(ExplainabilityConfig(), items, TOP_K[task])
        explain = {ex.id: expl.score(ex, answers[ex.id].raw_text)
                   for ex in examples if valid[ex.id]}
    result = evaluate_rankings(examples, rankings, valid, items, ks, scorer, explain,
                               diversity_k=TOP_K[task])
    row = {"method": ranker.name, "group": group_of(method), "source": "computed",
           "metrics": with_ci(result, resamples, seed),
           "fit_seconds": round(t1 - t0, 1), "rank_seconds": round(t2 - t1, 1)}
    if explain is not None:
        row["explainability_scorer"] = "rubric (offline grounding score, 1-100)"
        # the parsed answers, so a low ValidRatio can be read, not only counted
        row["answers"] = [{"id": ex.id, **answers[ex.id].to_json()} for ex in examples]
    log = ranker.fit_log()
    if log:
        row["epochs"] = len(log)
        row["best_val_mrr"] = max(h["val_mrr"] for h in log)
    return row


@dataclass(frozen=True)
class TrainingInput:
    """What one model was trained on, for the held-out check: its examples and a description
    for the table's note. The caller that knows where the model came from (a run directory:
    reclaif.pipeline.inputs) builds it, so the table needs no knowledge of runs."""
    examples: list[Example]
    what: str


def training_inputs(methods: Sequence[str], train: list[Example], train_path: str,
                    model_inputs: Mapping[str, TrainingInput | None]
                    ) -> tuple[list[Example], list[str], list[str]]:
    """Every training input behind the table's rows: (examples, what they are, models whose
    input is unknown). The inputs are `train` (the learned baselines) and, for each model:PATH,
    its entry of `model_inputs`; a model without one (None, or missing) cannot be checked."""
    combined, names = list(train), [f"--train {train_path} ({len(train):,})"] if train else []
    unknown = []
    for m in methods:
        if not m.startswith("model:"):
            continue
        given = model_inputs.get(m)
        if given is None:
            unknown.append(m)
            continue
        known = {ex.id for ex in combined}
        combined += [ex for ex in given.examples if ex.id not in known]
        names.append(given.what)
    return combined, names, unknown


def run_rows(run_dir: str | Path, resamples: int, seed: int = 0) -> list[dict[str, Any]]:
    """Rows from the eval.json files a run directory holds: base/, sft/, iter-NNN/, eval/*.json.
    A run without any is skipped with a printed note."""
    root = Path(run_dir)
    files = [root / s / "eval.json" for s in (BASE, SFT)]
    files += [d / "eval.json" for d in iteration_dirs(root)] + sorted(root.glob("eval/*.json"))
    rows = []
    for f in files:
        if not f.is_file():
            continue
        try:
            result = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{f}: not valid JSON ({e.msg})") from None
        if not isinstance(result, dict) or "metrics" not in result:
            raise DataError(f"{f}: no 'metrics' (expected an evaluate_rankings result)")
        stage = f.stem if f.parent.name == "eval" else f.parent.name
        it = iteration_of(stage)
        label = {BASE: "Base (zero-shot)", SFT: "SFT"}.get(
            stage, f"DPO-Iter{it}" if it is not None else stage)
        rows.append({"method": f"{root.name}: {label}", "group": "Ours (run)",
                     "source": str(f), "split": result.get("split"),
                     "n_examples": result.get("n_examples"),
                     "metrics": with_ci(result, resamples, seed)})
    if not rows:
        print(f"note: {root} has no eval.json (base/, sft/, {ITERATION_GLOB}/ or eval/); "
              "no rows added")
    return rows


def _cell(m: dict[str, Any] | None, key: str, applies: bool) -> str:
    if not applies or m is None or m.get("mean") is None:
        return "-"
    if key == "explainability":
        return f"{m['mean']:.2f}"
    ci = m.get("ci95")
    return f"{m['mean']:.4f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{m['mean']:.4f}"


def to_markdown(table: dict[str, Any]) -> str:
    task = table["task"]
    cols = COLUMNS[task]
    lines = [f"### {TABLE[task]} layout ({task}): {table['eval']['examples']}", "",
             f"- Evaluation: split {table['eval']['split']!r}, {table['eval']['n']:,} examples "
             f"({table['eval']['candidates']} candidates each){table['eval']['subset']}, "
             f"top-{TOP_K[task]} answers.",
             f"- Training input of learned baselines: {table['train']['path'] or '-'}, "
             f"split {table['train']['split']!r}, {table['train']['n']:,} examples; "
             f"held-out check: {table['held_out']}.",
             f"- [a, b]: 95% percentile bootstrap interval over examples, "
             f"{table['bootstrap']} resamples, seed {table['seed']}. '-': not applicable.", "",
             "| Group | Method | " + " | ".join(h for h, _ in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for row in table["rows"]:
        llm_like = row["group"] in ("LLM-based", "Ours (run)")
        cells = [_cell(row["metrics"].get(k), k, k != "explainability" or llm_like)
                 for _, k in cols]
        lines.append(f"| {row['group']} | {row['method']} | " + " | ".join(cells) + " |")
    for row in table["rows"]:
        if row.get("split") and row["split"] != table["eval"]["split"]:
            lines.append(f"\nnote: {row['method']} was evaluated on split {row['split']!r} "
                         f"({row.get('n_examples')} examples), not on the split above")
        elif row.get("n_examples") not in (None, table["eval"]["n"]):  # eval.base_examples
            lines.append(f"\nnote: {row['method']} was evaluated on {row['n_examples']} "
                         f"examples, not the {table['eval']['n']:,} above")
    return "\n".join(lines)


def build_table(examples: list[Example], train: list[Example], items: dict[str, Item],
                methods: Sequence[str], ks: list[int], resamples: int = 1000, seed: int = 0,
                diversity: bool = True, run_dirs: Sequence[str] = (),
                eval_path: str = "", train_path: str = "", limit: int = 0,
                max_new_tokens: int = 256,
                model_inputs: Mapping[str, TrainingInput | None] | None = None) -> dict[str, Any]:
    """The table over `examples` (a whole split: the held-out check runs on it, then `limit`
    keeps the first N examples that passed). `model_inputs` holds what each model:PATH method
    was trained on, where that is known (reclaif.pipeline.inputs.checkpoint_inputs)."""
    tasks = {ex.task for ex in examples}
    if len(tasks) != 1:
        raise DataError(f"{eval_path}: evaluation examples mix tasks {sorted(tasks)}; "
                        "evaluate one split or one dataset")
    task = tasks.pop()
    ks = sorted(set(ks) | set(NEEDED_KS[task]))
    learned = [m for m in methods if is_learned(m)]
    if learned and not train:
        raise ReclaifError(f"methods {', '.join(learned)} learn from training data: "
                           "give training examples (train)")
    trained_on, inputs, unknown = training_inputs(methods, train, train_path,
                                                model_inputs or {})
    held = "no training input to check (no --train, no model from a run directory)"
    n_split = len(examples)
    if trained_on:
        result = check_held_out(trained_on, examples, what=" + ".join(inputs))
        examples, held = result.kept, result.note()
    if unknown:
        held += (f"; not checked: {', '.join(unknown)} (not inside a run directory, so its "
                 "training input is unknown)")
    if limit:
        examples = examples[:limit]
    if not examples:
        raise DataError(f"{eval_path}: no evaluation example left after the held-out check")
    subset = f"; the first {len(examples):,} of {n_split:,} (--limit {limit})" if limit else ""
    scorer = None
    if diversity:
        scorer = DiversityScorer(items)
    rows = []
    for m in methods:
        log.info("table: %s on %d examples", m, len(examples))
        rows.append(score_method(m, examples, train, items, ks, scorer, resamples, seed,
                                 max_new_tokens))
    for d in run_dirs:
        rows.extend(run_rows(d, resamples, seed))
    sizes = sorted({len(ex.candidates) for ex in examples})
    return {"table": TABLE[task], "task": task, "columns": [h for h, _ in COLUMNS[task]],
            "metric_keys": [k for _, k in COLUMNS[task]], "ks": ks,
            "eval": {"examples": eval_path, "split": examples[0].split if len(
                {ex.split for ex in examples}) == 1 else "mixed", "n": len(examples),
                "n_split": n_split, "limit": limit, "subset": subset,
                "candidates": "/".join(map(str, sizes))},
            "train": {"path": train_path, "n": len(train),
                      "split": ",".join(sorted({ex.split for ex in train})) or "-"},
            "held_out": held, "bootstrap": resamples, "seed": seed, "rows": rows}


def load_table_data(examples_path: str | Path, split: str | None = None,
                    train_path: str | Path | None = None
                    ) -> tuple[list[Example], list[Example], dict[str, Item]]:
    """The evaluation examples (of `split`, or all), the learned baselines' training examples
    and the items of both, as build_table takes them."""

    examples = load_examples(examples_path, split=split)
    if not examples:
        raise DataError(f"{examples_path}: no examples to evaluate"
                        + (f" in split {split!r}" if split else ""))
    items = load_items(examples_path)
    train: list[Example] = []
    if train_path:
        # a prepared directory may hold every split; learned baselines see only 'train'
        everything = load_examples(train_path)
        train = [ex for ex in everything if ex.split == "train"] or everything
        # the directory's interaction sequences, where it has them: what a run's evidence
        # models are fitted on, so the baseline rows and the evidence come from the same data
        train = fit_windows(train_path, "train", train) or train
        items = {**load_items(train_path), **items}
    return examples, train, items
