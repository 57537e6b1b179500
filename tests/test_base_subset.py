"""eval.base_examples: the base model scored on the first N evaluation examples only, its row
saying n=N, and paired comparisons pairing only the examples both stages scored."""
from __future__ import annotations

import json

import pytest

from reclaif.config_load import load_config
from reclaif.errors import ConfigError
from reclaif.pipeline.driver import Driver
from reclaif.pipeline.report import paired_lines, table_rows
from reclaif.run_layout import BASE, stage_name
from reclaif.teacher import make_teacher

SMALL = ["data.max_train_examples=4", "data.max_eval_examples=4", "eval.k=[1,3]"]


def _driver(tmp_path, base_examples: int) -> Driver:
    return Driver(load_config(None, SMALL + [f"eval.base_examples={base_examples}"]),
                  tmp_path / "run")


def test_base_is_scored_on_the_first_n_evaluation_examples(tmp_path):
    driver = _driver(tmp_path, 2)
    ids = [e.id for e in driver.eval]
    assert len(ids) == 4
    for n, want in ((2, ids[:2]), (0, []), (-1, ids), (9, ids)):
        driver.cfg.eval.base_examples = n  # the driver reads it from its frozen config
        assert [e.id for e in driver.base_examples()] == want, n


def test_base_examples_below_minus_one_is_refused():
    with pytest.raises(ConfigError, match="eval.base_examples"):
        load_config(None, ["eval.base_examples=-2"])


def test_the_base_row_says_its_n_and_pairs_only_common_examples(tmp_path, monkeypatch):
    """Generation answered by the offline teacher (real, valid answers from the labels), so
    the driver's evaluation, its files and the report run as they do on a model's answers."""
    driver = _driver(tmp_path, 2)
    teacher = make_teacher(driver.cfg.teacher, driver.items, driver.top_k)
    asked: dict[str, list[str]] = {}

    def generate(key, examples, model, out_dir, *args, **kwargs):
        asked[key] = [e.id for e in examples]
        return [{"example_id": e.id, "answers": [a]}
                for e, a in zip(examples, teacher.respond_many(examples))]

    monkeypatch.setattr(driver, "_generate", generate)
    driver.evaluate(BASE, "base-model", driver.base_examples())
    driver.evaluate(stage_name(1), "iter-model")  # every evaluation example

    assert asked == {"base/eval": [e.id for e in driver.eval[:2]],
                     "iter-001/eval": [e.id for e in driver.eval]}
    base = json.loads((driver.store.root / "base/eval.json").read_text())
    assert base["n_examples"] == 2 and base["metrics"]["valid_ratio"]["mean"] == 1.0
    _, rows = table_rows(driver.store.root)
    labels = [r[0] for r in rows if not r[0].startswith(("Random", "Popularity"))]
    assert labels == ["Base (zero-shot) (n=2)", "DPO-Iter1"]
    paired = paired_lines(driver.store.root)
    assert paired and all("same 2 examples" in line for line in paired)
    assert "Base (zero-shot) (n=2)" in (driver.store.root / "report.md").read_text()
    # `reclaif eval --run` rows: the base row's note says it covered fewer examples
    from reclaif.comparison.table import run_rows, to_markdown

    rows = run_rows(driver.store.root, resamples=10)
    table = {"task": "sequential", "rows": rows, "held_out": "-", "bootstrap": 10, "seed": 0,
             "eval": {"examples": "sample", "split": "valid", "n": 4, "candidates": 20,
                      "subset": ""},
             "train": {"path": "sample", "split": "train", "n": 4}}
    text = to_markdown(table)
    assert "Base (zero-shot) was evaluated on 2 examples, not the 4 above" in text
    assert "DPO-Iter1 was evaluated on" not in text
