"""`reclaif judge audit`: consistency, ties and agreement with the human labels of verdict rows."""
from __future__ import annotations

import json

import pytest

from reclaif.atomic import atomic_write_jsonl as write_jsonl
from reclaif.cli import main
from reclaif.data import lastfm
from reclaif.judge.audit import audit
from reclaif.records import Scores, Verdict
from reclaif.teacher import OfflineTeacher

TOP_K = 3


def row(ex, a, b, choice, consistent=True):
    v = Verdict(Scores(1, 1, 1), Scores(1, 1, 1), choice, "raw", consistent=consistent)
    return {"example_id": ex.id, "a": a, "b": b, "verdict": v.to_json()}


@pytest.fixture(scope="module")
def data(real_data):
    return lastfm.load(real_data / "lastfm" / "sdpo" / "lastfm-val.json", limit=8)


@pytest.fixture(scope="module")
def answers(data):
    """(with the target first, without the target) per example."""
    teacher = OfflineTeacher(data.items, TOP_K)
    out = []
    for ex in data.examples:
        good = teacher.respond(ex)
        target = data.items[next(iter(ex.relevant()))].title
        other = next(data.items[c].title for c in ex.candidates if data.items[c].title not in good)
        out.append((good, good.replace(target, other)))
    return out


def test_counts_consistency_ties_and_label_agreement(data, answers):
    exs = data.examples
    rows = [row(exs[0], *answers[0], "a"),            # agrees with the labels
            row(exs[1], *answers[1][::-1], "b"),      # agrees (good answer in position b)
            row(exs[2], *answers[2], "b"),            # disagrees
            row(exs[3], *answers[3], "tie", consistent=False),
            row(exs[4], answers[4][1], answers[4][1], "a"),   # equal by labels: excluded
            row(exs[5], *answers[5], "tie")]
    res = audit(rows, {e.id: e for e in exs}, data.items, top_k=TOP_K)
    assert res["verdicts"] == 6
    assert res["position_consistency"] == pytest.approx(5 / 6) and res["inconsistent"] == 1
    assert res["tie_rate"] == pytest.approx(2 / 6)
    assert res["choices"] == {"a": 2, "b": 2, "tie": 2}
    la = res["label_agreement"]
    assert (la["agree"], la["decided"], la["equal_by_labels"], la["ties_on_distinct"]) == \
        (2, 3, 1, 2)
    assert la["rate"] == pytest.approx(2 / 3)


def test_an_invalid_answer_counts_as_a_miss_even_if_it_names_the_target(data, answers):
    ex = data.examples[6]
    target = data.items[next(iter(ex.relevant()))].title
    invalid = f"**Key Preferences:**\n- Preference 1: rock\n\n1. {target} - the next one"
    res = audit([row(ex, invalid, answers[6][1], "b")], {ex.id: ex}, data.items, top_k=TOP_K)
    assert res["label_agreement"]["equal_by_labels"] == 1   # both NDCG 0: excluded
    res = audit([row(ex, invalid, answers[6][0], "b")], {ex.id: ex}, data.items, top_k=TOP_K)
    assert res["label_agreement"]["rate"] == 1.0


def test_failed_rows_of_the_driver_are_skipped_and_counted(data, answers):
    rows = [row(data.examples[0], *answers[0], "a"),
            {"example_id": data.examples[1].id, "failed": True, "error": "actor died"}]
    res = audit(rows, None)
    assert res["verdicts"] == 1 and res["failed_rows"] == 1


def test_without_examples_only_the_label_free_numbers(data, answers):
    res = audit([row(data.examples[0], *answers[0], "a")], None)
    assert "label_agreement" not in res and res["position_consistency"] == 1.0


def test_rows_whose_example_is_unknown_are_counted(data, answers):
    res = audit([row(data.examples[0], *answers[0], "a")], {}, data.items)
    assert res["label_agreement"]["missing_examples"] == 1
    assert res["label_agreement"]["rate"] is None


def test_cli_reads_a_run_verdicts_file_and_a_dataset_dir(data, answers, tmp_path, capsys):
    ds = tmp_path / "ds"
    write_jsonl(ds / "examples.jsonl", [e.to_json() for e in data.examples])
    write_jsonl(ds / "items.jsonl", [data.items[i].to_json() for e in data.examples
                                     for i in {*e.context, *e.candidates}])
    verdicts = tmp_path / "run" / "iter-001" / "verdicts.jsonl"
    write_jsonl(verdicts, [row(e, *ans, "a") for e, ans in zip(data.examples, answers)])
    assert main(["judge", "audit", str(verdicts), "--examples", str(ds), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["label_agreement"]["rate"] == 1.0
    assert res["label_agreement"]["decided"] == len(data.examples)
    assert main(["judge", "audit", str(verdicts)]) == 0
    text = capsys.readouterr().out
    assert "position consistency: 1.000" in text and "tie rate:" in text


def test_cli_names_the_missing_field(tmp_path, capsys):
    bad = tmp_path / "verdicts.jsonl"
    bad.write_text(json.dumps({"example_id": "x", "a": "", "b": ""}) + "\n")
    assert main(["judge", "audit", str(bad)]) == 2
    assert "missing field 'verdict'" in capsys.readouterr().err


def test_non_utf8_verdicts_file_is_one_line_naming_file_and_line(tmp_path, capsys):
    from reclaif.cli import main

    f = tmp_path / "verdicts.jsonl"
    f.write_bytes(b'{"example_id": "a"}\n{"example_id": "caf\xe9"}\n')
    assert main(["judge", "audit", str(f)]) == 2
    err = capsys.readouterr().err
    assert f"{f}:2: not UTF-8 (byte 0xe9 at column 20)" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def tagged():
    """8 bundled-sample validation prompts and the teacher's answers: clean tags from the full
    training split (most artists of the raw fixture above are untagged). Its prompts are
    sliding windows, several per user, so each one here shares no history item with those
    before it: different listeners, whose key features may well differ."""
    from reclaif.data import load_examples, load_items

    items = load_items("sample")
    examples, seen = [], set()
    for ex in load_examples("sample", split="valid"):
        if len(examples) < 8 and not seen & set(ex.context):
            examples.append(ex)
            seen |= set(ex.context)
    teacher = OfflineTeacher(items, TOP_K)
    return examples, items, [teacher.respond(ex) for ex in examples]


def _generic(ex, items, answer):
    """The same ranking with the quickstart's failure: one key-feature set for every user and
    reasons that say nothing about the history."""
    from reclaif.parsing import format_recommendation, parse_recommendation

    rec = parse_recommendation(answer, ex, items, TOP_K)
    return format_recommendation(["electronic", "trance"], [items[i].title for i in rec.items],
                                 ["A strong pick."] * len(rec.items))


def test_audit_shows_the_share_of_linked_reasons_and_of_distinct_key_features(tagged):
    examples, items, answers = tagged
    exs = {e.id: e for e in examples}
    ours = [row(e, ans, ans, "tie") for e, ans in zip(examples, answers)]
    generic = [row(e, _generic(e, items, ans), _generic(e, items, ans), "tie")
               for e, ans in zip(examples, answers)]
    good = audit(ours, exs, items, top_k=TOP_K)["explanations"]
    bad = audit(generic, exs, items, top_k=TOP_K)["explanations"]
    n = 2 * len(examples)
    assert good["answers"] == bad["answers"] == n and good["reasons"] == n * TOP_K
    assert bad["linked"] == 0 and bad["distinct_feature_sets"] == 1
    assert good["linked_share"] > 0.5, good
    assert good["distinct_feature_sets"] > len(examples) // 2, good
    from reclaif.judge.audit import format_report
    text = format_report(audit(ours, exs, items, top_k=TOP_K))
    assert f"of reasons linked to the history ({good['linked']} of {n * TOP_K})" in text
    assert good["linked"] <= good["linkable"] == bad["linkable"] <= n * TOP_K, good
    assert f"{good['linkable_share']:.3f} of picks with a link to cite" in text


def test_checkable_lines_show_each_reasons_facts(data, answers):
    from reclaif.judge.links import checkable
    from reclaif.parsing import parse_recommendation

    ex = data.examples[0]
    rec = parse_recommendation(answers[0][0], ex, data.items, TOP_K)
    lines = checkable(ex, rec, data.items)
    assert lines[0].startswith(f"- {ex.id}: history ") and len(lines) == 2 + TOP_K
    for line, item, reason in zip(lines[2:], rec.items, rec.reasons):
        assert f"{data.items[item].title}: \"{reason}\"" in line and "has: " in line
        assert ("link: none" in line) == reason.startswith("Less obvious pick")
