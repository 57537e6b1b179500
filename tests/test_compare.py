"""`reclaif compare`: two runs evaluated on the same real sample examples by the driver's own
evaluation, answered by the offline teacher (valid answers) or, for some examples, by text that
is no answer at all; paired differences, the examples each metric pairs, and clear refusals."""
from __future__ import annotations

import json

import pytest

from reclaif.cli import main
from reclaif.config_load import load_config
from reclaif.errors import ReclaifError
from reclaif.pipeline.compare import compare_runs, format_comparison
from reclaif.pipeline.phases import evaluate, open_run
from reclaif.run_layout import stage_name
from reclaif.teacher import make_teacher

SMALL = ["data.max_train_examples=4", "data.max_eval_examples=6", "eval.k=[1,3]"]


def _evaluated_run(root, name: str, broken: set[int]):
    """A run whose iteration 1 answers example i with the teacher's answer, or with a line
    that is no recommendation where i is in `broken`."""
    import reclaif.pipeline.phases.generation as generation

    run = open_run(load_config(None, SMALL), root / name)
    teacher = make_teacher(run.cfg.teacher, run.items, run.top_k)

    def generate(run, key, examples, model, out_dir, *args, **kwargs):
        answers = teacher.respond_many(examples)
        return [{"example_id": e.id, "answers": ["I cannot help with that." if i in broken
                                                 else a]}
                for i, (e, a) in enumerate(zip(examples, answers))]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(generation, "generate", generate)
        evaluate(run, stage_name(1), f"{name}-model")
    return run.store.root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A answers all 6 examples validly, run B the last 3 only."""
    root = tmp_path_factory.mktemp("compare")
    return _evaluated_run(root, "a", set()), _evaluated_run(root, "b", {0, 1, 2})


def test_paired_differences_pair_the_examples_both_runs_scored(runs):
    a_dir, b_dir = runs
    a, b = (json.loads((d / "iter-001/eval.json").read_text()) for d in runs)
    assert a["per_example"]["ids"] == b["per_example"]["ids"]
    (stage, diffs), = compare_runs(a_dir, b_dir, resamples=200)
    by = {d.metric: d for d in diffs}
    assert stage == "iter-001" and set(by) == {"hit@1", "ndcg@3", "valid_ratio",
                                                "explainability"}
    assert by["valid_ratio"].a == 1.0 and by["valid_ratio"].b == 0.5
    assert by["valid_ratio"].diff == pytest.approx(0.5) and by["valid_ratio"].n == 6
    # the teacher ranks a label first: each broken answer costs B one hit
    assert by["hit@1"].diff == pytest.approx(0.5)
    assert by["hit@1"].lo <= 0.5 <= by["hit@1"].hi
    # an invalid answer has no explainability: only the 3 examples both answered validly pair,
    # where the answers are the same
    assert by["explainability"].n == 3 and by["explainability"].diff == pytest.approx(0.0)
    text = format_comparison([(stage, diffs)], "A", "B")
    assert "| valid_ratio | 1.000 | 0.500 | +0.500 [" in text and "| 3 |" in text


def test_cli_compare_prints_json_and_refuses_a_stage_a_run_lacks(runs, capsys):
    a_dir, b_dir = runs
    assert main(["compare", str(a_dir), str(b_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [d["metric"] for d in out["iter-001"]] == ["hit@1", "ndcg@3", "valid_ratio",
                                                      "explainability"]
    assert main(["compare", str(a_dir), str(b_dir), "--stage", "iter-002"]) != 0
    assert "stage 'iter-002' was not evaluated" in capsys.readouterr().err


def test_runs_on_different_examples_are_refused(runs, tmp_path):
    a_dir, b_dir = runs
    other = tmp_path / "other"
    (other / "iter-001").mkdir(parents=True)
    result = json.loads((b_dir / "iter-001/eval.json").read_text())
    result["per_example"]["ids"] = [f"other-{i}" for i in result["per_example"]["ids"]]
    (other / "iter-001/eval.json").write_text(json.dumps(result))
    with pytest.raises(ReclaifError, match="share no scored example"):
        compare_runs(a_dir, other)
    with pytest.raises(ReclaifError, match="no evaluated stage"):
        compare_runs(a_dir, tmp_path / "empty")
