"""The report's agreement lines: how often a stage's first pick is the evidence's #1, read back
from a run directory's own files (evidence/eval.jsonl, baselines.json, predictions.jsonl)."""
import json

from reclaif.evidence.models import evidence_first
from reclaif.pipeline.report import agreement_lines, table_markdown


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(rows, list):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows))


def test_evidence_first_reads_the_first_ranking_source():
    ev = {"a": "SASRec #2 (0.30); tags: rock", "b": "SASRec #1 (0.61)", "c": "tags: pop"}
    assert evidence_first(ev) == "b"
    assert evidence_first({"a": "follows your last artist for 3 listeners; BM25 #1 (4.2)"}) == "a"
    assert evidence_first({"a": "SASRec #10 (0.01)", "b": "SASRec #11 (0.00)"}) is None
    assert evidence_first({}) is None


def test_agreement_counts_copies_and_overrides(tmp_path):
    ids = ["e1", "e2", "e3", "e4"]
    _write(tmp_path / "evidence/eval.jsonl", [
        {"id": i, "candidates": ["x", "y"],
         "evidence": {"x": "SASRec #1 (0.7)", "y": "SASRec #2 (0.3)"}} for i in ids])
    # the evidence's own row: right on e1, e2, e4
    _write(tmp_path / "evidence/baselines.json", {"sasrec-ce": {
        "metrics": {"hit@1": 0.75}, "n_examples": 4,
        "per_example": {"ids": ids, "hit@1": [1, 1, 0, 1]}}})
    # SFT copies x on e1, e2; picks y on e3 (right: the evidence was wrong) and e4 (wrong)
    _write(tmp_path / "sft/predictions.jsonl", [
        {"id": i, "items": [first, "x" if first == "y" else "y"], "valid": True,
         "key_features": [], "reasons": [], "raw_text": ""}
        for i, first in zip(ids, ["x", "x", "y", "y"])])
    _write(tmp_path / "sft/eval.json", {"metrics": {"hit@1": 0.75}, "per_example": {
        "ids": ids, "hit@1": [1, 1, 1, 0], "valid": [1, 1, 1, 1]}})
    (line,) = agreement_lines(tmp_path)
    assert line == ("- SFT: first pick = the evidence's #1 in 2 of 4 valid answers; "
                    "of the 2 others, 1 right (the evidence's #1: 1)")
    assert line in table_markdown(tmp_path)


def test_the_last_trained_stage_is_paired_with_each_baseline_row(tmp_path):
    """Issue 29's bars ("above BM25", "within 0.02 of SASRec-CE") as paired differences on the
    run's own examples: SFT's while no iteration has been evaluated, then the last one's."""
    from reclaif.pipeline.report import baseline_paired_lines

    ids = [f"e{i}" for i in range(8)]
    _write(tmp_path / "config.yaml", {"data": {"dataset": "beauty"}})
    _write(tmp_path / "evidence/baselines.json", {
        "sasrec-ce": {"metrics": {"hit@1": 0.5}, "per_example": {
            "ids": ids, "hit@1": [1, 1, 1, 1, 0, 0, 0, 0], "valid": [1] * 8}},
        "bm25": {"metrics": {"hit@1": 0.25}, "per_example": {
            "ids": ids, "hit@1": [1, 0, 1, 0, 0, 0, 0, 0], "valid": [1] * 8}}})
    _write(tmp_path / "sft/eval.json", {"metrics": {"hit@1": 0.5}, "per_example": {
        "ids": ids, "hit@1": [1, 1, 1, 1, 0, 0, 0, 0], "valid": [1] * 8,
        "explainability": [50.0] * 8}})
    lines = baseline_paired_lines(tmp_path)
    assert [line.split(" [")[0] for line in lines] == [
        "- SFT − SASRec-CE (evidence model), hit@1: +0.000", "- SFT − BM25, hit@1: +0.250"]
    assert all("same 8 examples" in line for line in lines)
    # the iteration, scored on 4 of them only, is paired on those 4
    _write(tmp_path / "iter-001/eval.json", {"metrics": {"hit@1": 1.0}, "per_example": {
        "ids": ids[4:], "hit@1": [1, 1, 1, 1], "valid": [1] * 4}})
    lines = baseline_paired_lines(tmp_path)
    assert lines[1].startswith("- DPO-Iter1 − BM25, hit@1: +1.000") and "same 4" in lines[1]
    assert lines[1] in table_markdown(tmp_path, context=None)
    assert baseline_paired_lines(tmp_path / "missing") == []


def test_no_agreement_lines_in_names_only_runs(tmp_path):
    _write(tmp_path / "evidence/eval.jsonl", [{"id": "e1", "candidates": ["x"], "evidence": {}}])
    assert agreement_lines(tmp_path) == []
    assert agreement_lines(tmp_path / "missing") == []


def test_report_shows_explanation_shares_and_three_checkable_examples_per_row(tmp_path):
    """Issue 31: per stage row, the share of reasons linked to the history and of distinct
    key-feature sets, and three answers whose every reason a person can check."""
    from reclaif.data import load_examples, load_items
    from reclaif.parsing import format_recommendation, parse_recommendation
    from reclaif.pipeline.report import write_report
    from reclaif.teacher import OfflineTeacher

    examples, items = load_examples("sample", "valid")[:6], load_items("sample")
    teacher = OfflineTeacher(items, 3)
    (tmp_path / "config.yaml").write_text("data:\n  path: sample\n  eval_split: valid\n")
    recs = [parse_recommendation(teacher.respond(ex), ex, items, 3) for ex in examples]
    generic = [parse_recommendation(format_recommendation(
        ["electronic", "trance"], [items[i].title for i in r.items], ["SASRec #1."] * 3),
        ex, items, 3) for ex, r in zip(examples, recs)]
    for stage, rows in (("base", generic), ("sft", recs)):
        _write(tmp_path / stage / "predictions.jsonl",
               [{"id": ex.id, **r.to_json()} for ex, r in zip(examples, rows)])
        _write(tmp_path / stage / "eval.json", {"metrics": {"hit@1": 1.0}})
    text = (tmp_path / write_report(tmp_path)).read_text()
    assert ("- Base (zero-shot): reasons linked to the history 0.00 (0 of 18); distinct "
            "key-feature sets 0.17 (1 of 6 answers)") in text
    sft = next(line for line in text.splitlines() if line.startswith("- SFT: reasons linked"))
    assert float(sft.split("history ")[1].split()[0]) > 0.5
    # the same items in both rows: the same picks have a link to cite, and SFT links no more
    base = next(line for line in text.splitlines() if line.startswith("- Base (zero-shot):"))
    cite = [line.split("picks with a link to cite ")[1] for line in (base, sft)]
    assert cite[0] == cite[1], cite
    linked, can = int(sft.split("(")[1].split()[0]), int(cite[1].split("(")[1].split()[0])
    assert 0 < linked <= can <= 18, sft
    checks = text.split("## Explanations a person can check")[1]
    for label in ("**Base (zero-shot):**", "**SFT:**"):
        block = checks.split(label)[1].split("**")[0]
        assert sum(line.startswith("- lastfm") or line.startswith("- ") and ": history" in line
                   for line in block.splitlines()) == 3
        assert block.count("; link: ") == 9
    assert "Explanations a person can check" in (tmp_path / "report.html").read_text()
