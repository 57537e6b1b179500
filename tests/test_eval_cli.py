"""`reclaif eval --examples DIR --predictions FILE`: every metric's mean and count."""
from __future__ import annotations

import json

import pytest
from lastfm_records import lastfm_examples

from reclaif.atomic import atomic_write_jsonl
from reclaif.cli import main
from reclaif.parsing import format_recommendation

N = 12


@pytest.fixture(scope="module")
def dataset(real_data, tmp_path_factory):
    examples, items = lastfm_examples(real_data, N)
    d = tmp_path_factory.mktemp("lastfm")
    atomic_write_jsonl(d / "examples.jsonl", [ex.to_json() for ex in examples])
    atomic_write_jsonl(d / "items.jsonl", [it.to_json() for it in items.values()])
    return d, examples


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["eval", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _predictions(examples) -> list[dict]:
    """Even examples: an ids list of top-3 with the target first; odd: a text answer ranking it
    second. The last example gets no prediction; example 1's text names only two candidates."""
    rows = []
    for n, ex in enumerate(examples[:-1]):
        (target,) = ex.labels
        others = [c for c in ex.candidates if c != target]
        if n % 2 == 0:
            rows.append({"id": ex.id, "items": [target, *others[:2]]})
        else:
            picks = [others[0], target, others[1]][: 2 if n == 1 else 3]
            text = format_recommendation(["moody rock"], picks, ["r"] * len(picks))
            rows.append({"id": ex.id, "text": "Sure! Here you go.\n\n" + text})
    return rows


def test_eval_scores_items_and_text_predictions(dataset, tmp_path, capsys):
    d, examples = dataset
    rows = _predictions(examples)
    atomic_write_jsonl(tmp_path / "p.jsonl", rows)
    rc, out, err = _run(capsys, "--examples", str(d), "--predictions", str(tmp_path / "p.jsonl"),
                        "--k", "1,3", "--no-diversity", "--bootstrap", "50",
                        "--out", str(tmp_path / "r.json"))
    assert rc == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert json.loads(out)["metrics"] == result["metrics"]
    m = result["metrics"]
    evens = len(range(0, N - 1, 2))             # target first, valid
    odds_valid = len(range(3, N - 1, 2))         # target second, valid (example 1 is invalid)
    assert result["n_examples"] == N and result["n_missing"] == 1
    assert "1 of 12 examples have no prediction" in err
    assert m["hit@1"] == {"mean": pytest.approx(evens / N), "count": N,
                          "ci95": m["hit@1"]["ci95"]}
    assert m["hit@3"]["mean"] == pytest.approx((evens + odds_valid) / N)
    assert m["mrr"]["mean"] == pytest.approx((evens + odds_valid / 2) / N)
    assert m["valid_ratio"]["mean"] == pytest.approx((evens + odds_valid) / N)
    assert m["diversity"]["count"] == 0
    lo, hi = m["hit@1"]["ci95"]
    assert lo <= m["hit@1"]["mean"] <= hi
    assert len(result["per_example"]["ids"]) == N


@pytest.mark.slow  # the first sentence-transformers import: ~10-40 s here
def test_eval_with_diversity_uses_the_task_top_k(dataset, tmp_path, capsys):
    d, examples = dataset
    atomic_write_jsonl(tmp_path / "p.jsonl", _predictions(examples))
    rc, out, _ = _run(capsys, "--examples", str(d), "--predictions", str(tmp_path / "p.jsonl"),
                      "--bootstrap", "0")
    result = json.loads(out)
    assert rc == 0 and result["diversity_k"] == 3
    valid = round(result["metrics"]["valid_ratio"]["mean"] * N)
    assert result["metrics"]["diversity"]["count"] == valid
    assert 0 < result["metrics"]["diversity"]["mean"] < 2


def test_unknown_prediction_id_names_file_and_line(dataset, tmp_path, capsys):
    d, examples = dataset
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"id": examples[0].id, "items": []}) + "\n\n"
                 + json.dumps({"id": "nope", "items": ["x"]}) + "\n")
    rc, _, err = _run(capsys, "--examples", str(d), "--predictions", str(p), "--no-diversity")
    assert rc == 2 and f"{p}:3:" in err and "'nope'" in err


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('{"id": "lastfm-val-0"}', "give 'items'"),
    ('["lastfm-val-0"]', "an object with an 'id'"),
])
def test_malformed_prediction_lines_are_data_errors(dataset, tmp_path, capsys, line, message):
    d, _ = dataset
    p = tmp_path / "p.jsonl"
    p.write_text(line + "\n")
    rc, _, err = _run(capsys, "--examples", str(d), "--predictions", str(p), "--no-diversity")
    assert rc == 2 and f"{p}:1:" in err and message in err


def test_bad_cut_offs_name_the_flag(dataset, tmp_path, capsys):
    d, examples = dataset
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"id": examples[0].id, "items": [examples[0].candidates[0]]}) + "\n")
    rc, _, err = _run(capsys, "--examples", str(d), "--predictions", str(p), "--k", "0,x")
    assert rc == 2 and "--k" in err


def test_top_k_flag_overrides_the_task_default(dataset, tmp_path, capsys):
    d, examples = dataset
    ex = examples[0]
    text = format_recommendation(["x"], ex.candidates[:2], ["a", "b"])
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"id": ex.id, "text": text}) + "\n")
    args = ["--examples", str(d), "--predictions", str(p), "--no-diversity", "--limit", "1"]
    _, out3, _ = _run(capsys, *args)
    _, out2, _ = _run(capsys, *args, "--top-k", "2")
    assert json.loads(out3)["metrics"]["valid_ratio"]["mean"] == 0.0
    assert json.loads(out2)["metrics"]["valid_ratio"]["mean"] == 1.0


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1" + "0" * 400])
def test_non_finite_explainability_is_a_data_error_not_json_nan(dataset, tmp_path, capsys, value):
    d, examples = dataset
    p = tmp_path / "p.jsonl"
    p.write_text(f'{{"id": "{examples[0].id}", "items": [], "explainability": 50}}\n'
                 f'{{"id": "{examples[1].id}", "items": [], "explainability": {value}}}\n')
    rc, _, err = _run(capsys, "--examples", str(d), "--predictions", str(p), "--no-diversity",
                      "--out", str(tmp_path / "e.json"))
    assert rc == 2 and f"{p}:2: 'explainability'" in err
    assert not (tmp_path / "e.json").exists()


def test_json_writers_never_write_nan(tmp_path):
    from reclaif.atomic import atomic_write_json

    atomic_write_json(tmp_path / "x.json", {"a": float("nan"), "b": [float("inf"), 1.5]})
    assert json.loads((tmp_path / "x.json").read_text(), parse_constant=lambda c: 1 / 0) == {
        "a": None, "b": [None, 1.5]}


@pytest.mark.parametrize("name", ["predictions", "examples"])
def test_non_utf8_predictions_or_examples_name_file_and_line(dataset, tmp_path, capsys, name):
    import shutil

    d, examples = dataset
    data = tmp_path / "data"
    shutil.copytree(d, data)
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"id": examples[0].id, "items": []}) + "\n")
    bad = p if name == "predictions" else data / "examples.jsonl"
    bad.write_bytes(bad.read_bytes() + '{"id": "caf\u00e9"}\n'.encode("latin-1"))
    rc, _, err = _run(capsys, "--examples", str(data), "--predictions", str(p), "--no-diversity")
    line = len(bad.read_bytes().splitlines())
    assert rc == 2 and f"{bad}:{line}: not UTF-8 (byte 0xe9" in err, err
    assert "Traceback" not in err
