"""A run's judged pairs as a Hugging Face dataset, for the rest of the ecosystem (TRL's
DPOTrainer, OpenRLHF, `datasets.load_dataset`).

One parquet file, `DIR/train.parquet` (the split `load_dataset(DIR)` calls "train"), one row
per pair: `prompt`, `chosen`, `rejected` in TRL's conversational format (lists of
{"role", "content"} messages: the trainer applies its model's chat template) or its standard
format (the prompt already rendered by the run's own chat template, exactly the text RecLAIF
trained on; the answers as plain text), plus `example_id`, `iteration` and the judge's
scores of each answer (`score_chosen` / `score_rejected`: relevance, diversity,
explainability on the paper's 0-5 scale).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

from reclaif.atomic import atomic_write_bytes, read_jsonl
from reclaif.errors import ReclaifError
from reclaif.records import PreferencePair
from reclaif.run_layout import ITERATION_GLOB, RunLayout, iteration_dirs, iteration_of

Format = Literal["conversational", "standard"]
FORMATS: tuple[str, ...] = ("conversational", "standard")


def standard_rows(tokenizer: Any, pairs: list[PreferencePair]) -> list[dict[str, str]]:
    """TRL's plain-text preference rows: the prompt rendered by the chat template exactly as
    RecLAIF trains on it (train.data.render_prompt); TRL appends EOS to each answer, as
    RecLAIF's encode does."""
    from reclaif.train.data import render_prompt  # torch: the standard format only

    return [{"prompt": render_prompt(tokenizer, p.prompt), "chosen": p.chosen,
             "rejected": p.rejected} for p in pairs]


def conversational_rows(pairs: list[PreferencePair]) -> list[dict[str, Any]]:
    return [{"prompt": [{"role": "user", "content": p.prompt}],
             "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]


def _scores(pair: PreferencePair) -> tuple[dict | None, dict | None]:
    """The judge's scores of the chosen and the rejected answer (None where not recorded)."""
    v = pair.verdict or {}
    a, b = v.get("scores_a"), v.get("scores_b")
    return (a, b) if v.get("choice") == "a" else (b, a) if v.get("choice") == "b" else (None, None)


def load_run_pairs(run_dir: str | Path, iteration: int = 0) -> list[tuple[int, PreferencePair]]:
    """(iteration, pair) of every judged iteration of the run, or of `iteration` alone."""
    layout = RunLayout(run_dir)
    if iteration:
        found = [(iteration, layout.pairs(iteration))]
        if not found[0][1].is_file():
            raise ReclaifError(f"{found[0][1]}: no pairs (iteration {iteration} was not judged "
                               "yet, or this is not a run directory)")
    else:
        found = [(iteration_of(d.name), layout.pairs(iteration_of(d.name)))
                 for d in iteration_dirs(run_dir)]
        found = [(i, f) for i, f in found if f.is_file()]
        if not found:
            raise ReclaifError(f"{run_dir}: no judged iteration (no pairs.jsonl in any "
                               f"{ITERATION_GLOB} directory); run the judge phase first")
    out = []
    for i, f in found:
        for n, row in enumerate(read_jsonl(f), 1):
            try:
                out.append((i, PreferencePair.from_json(row)))
            except (KeyError, TypeError) as e:
                raise ReclaifError(f"{f}:{n}: not a preference pair ({e})") from None
    return out


def export_pairs(run_dir: str | Path, out_dir: str | Path, iteration: int = 0,
                 fmt: Format = "conversational", tokenizer: Any = None) -> Path:
    """Writes `out_dir/train.parquet` (see the module doc) and returns its path. The standard
    format needs `tokenizer` (the run's recommender's) to render the prompts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt not in FORMATS:
        raise ReclaifError(f"format {fmt!r} is not one of {list(FORMATS)}")
    pairs = load_run_pairs(run_dir, iteration)
    plain = [p for _, p in pairs]
    if fmt == "standard":
        if tokenizer is None:
            raise ReclaifError("the standard format renders prompts with the run's tokenizer; "
                               "none was given")
        rows = standard_rows(tokenizer, plain)
    else:
        rows = conversational_rows(plain)
    for row, (i, p) in zip(rows, pairs):
        chosen, rejected = _scores(p)
        row.update(example_id=p.example_id, iteration=i, score_chosen=chosen,
                   score_rejected=rejected)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    out = Path(out_dir) / "train.parquet"
    atomic_write_bytes(out, buf.getvalue())
    return out
