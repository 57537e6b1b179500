"""`reclaif eval --methods ... [--run DIR]`: the paper's table layout, end to end on real
prepared data (Amazon Beauty 5-core, S-DPO LastFM prompts)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from reclaif.cli import main
from reclaif.data.prepare import prepare

HEADER3 = "| Group | Method | ValidRatio | Hit@1 | NDCG@3 | Diversity | Expl. |"


@pytest.fixture(scope="module")
def beauty_dirs(real_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("beauty")
    src = real_data / "beauty"
    prepare("beauty", src / "All_Beauty.train.csv.gz", root / "train")
    prepare("beauty", src / "All_Beauty.valid.csv.gz", root / "valid")
    return root / "train", root / "valid"


@pytest.fixture(scope="module")
def lastfm_dirs(real_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """LLaRA training rows (~40 users) and the first 150 S-DPO validation prompts: short item
    texts (artist name and tags), so the diversity embedding stays fast."""
    root = tmp_path_factory.mktemp("lastfm")
    lastfm = real_data / "lastfm"
    prepare("lastfm", lastfm / "llara" / "train.jsonl.gz", root / "train", limit=2000)
    prepare("lastfm", lastfm / "sdpo" / "lastfm-val.json", root / "valid", limit=150)
    return root / "train", root / "valid"


def run_eval(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["eval", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def rows_by_method(path: Path) -> dict[str, dict]:
    return {r["method"]: r for r in json.loads(path.read_text())["rows"]}


def test_table_command_prints_table3_with_intervals_and_writes_json(lastfm_dirs, tmp_path, capsys):
    train, valid = lastfm_dirs
    out = tmp_path / "table.json"
    rc, text, _ = run_eval(capsys, "--examples", str(valid), "--train", str(train), "--methods",
                           "random,popularity,bm25", "--limit", "120", "--bootstrap", "300",
                           "--out", str(out))
    assert rc == 0
    assert HEADER3 in text and "split 'valid', 120 examples (20 candidates each)" in text
    assert "split 'train', 2,000 examples" in text and "held-out check: passed" in text
    table = json.loads(out.read_text())
    assert table["table"] == "Table 3" and [r["method"] for r in table["rows"]] == \
        ["random", "popularity", "bm25"]
    for line in text.splitlines():
        if line.startswith("| Floor") or line.startswith("| Retrieval"):
            assert line.rstrip().endswith("| - |")  # no explanations: Expl. does not apply
    for row in table["rows"]:
        for key in ("valid_ratio", "hit@1", "ndcg@3", "diversity"):
            m = row["metrics"][key]
            lo, hi = m["ci95"]
            assert lo <= m["mean"] <= hi, (row["method"], key, m)
        assert row["metrics"]["valid_ratio"]["mean"] == 1.0
        assert row["metrics"]["explainability"]["mean"] is None
    hit = rows_by_method(out)["random"]["metrics"]["hit@1"]
    assert 0.0 < hit["ci95"][1] - hit["ci95"][0] < 0.2 and hit["count"] == 120


def test_table_refuses_baselines_trained_on_the_evaluation_examples(beauty_dirs, capsys):
    _, valid = beauty_dirs
    rc, _, err = run_eval(capsys, "--examples", str(valid), "--train", str(valid),
                          "--methods", "popularity", "--no-diversity")
    assert rc == 2 and "held-out check" in err


def test_learned_methods_need_training_data(beauty_dirs, capsys):
    _, valid = beauty_dirs
    rc, _, err = run_eval(capsys, "--examples", str(valid), "--methods", "sasrec",
                          "--no-diversity")
    assert rc == 2 and "give --train DIR" in err


def test_unknown_method_is_named(beauty_dirs, capsys):
    _, valid = beauty_dirs
    rc, _, err = run_eval(capsys, "--examples", str(valid), "--methods", "bm26", "--no-diversity")
    assert rc == 2 and "'bm26'" in err


def test_run_directory_rows_join_the_table(beauty_dirs, tmp_path, capsys):
    from reclaif.data import load_examples, load_items
    from reclaif.metrics.evaluate import evaluate_rankings

    _, valid = beauty_dirs
    examples, items = load_examples(valid)[:50], load_items(valid)
    run = tmp_path / "runs" / "beauty-run"
    for stage, first in (("sft", 1), ("iter-001", 0)):
        # a stage that always ranks the target first (iter-001) or second (sft)
        rankings = {ex.id: sorted(ex.candidates, key=lambda c: c not in ex.labels)
                    for ex in examples}
        if first:
            rankings = {i: r[1:2] + r[:1] + r[2:] for i, r in rankings.items()}
        result = evaluate_rankings(examples, rankings, None, items, [1, 3, 5], None,
                                   {ex.id: 80.0 for ex in examples})
        (run / stage).mkdir(parents=True)
        (run / stage / "eval.json").write_text(json.dumps({**result, "split": "valid"}))
    empty = tmp_path / "runs" / "empty-run"
    empty.mkdir()
    out = tmp_path / "t.json"
    rc, text, _ = run_eval(capsys, "--examples", str(valid), "--methods", "random", "--limit",
                           "50", "--run", str(run), "--run", str(empty), "--no-diversity",
                           "--out", str(out))
    assert rc == 0 and "empty-run has no eval.json" in text
    rows = rows_by_method(out)
    assert rows["beauty-run: DPO-Iter1"]["metrics"]["hit@1"]["mean"] == 1.0
    assert rows["beauty-run: SFT"]["metrics"]["hit@1"]["mean"] == 0.0
    assert "| Ours (run) | beauty-run: DPO-Iter1 | 1.0000 [1.000, 1.000] | 1.0000" in text
    assert text.count("| 80.00 |") == 2  # explainability shown for the run's rows only


def test_llm_method_ranks_through_the_recommender(real_data, tmp_path, capsys, monkeypatch):
    """llm:NAME goes through Recommender + parse_recommendation; a stand-in client answers
    with the target first for every other prompt and with nonsense otherwise."""
    from reclaif.comparison import llm_ranker
    from reclaif.data import load_examples, load_items
    from reclaif.llm.base import LLMClient

    d = tmp_path / "lastfm"
    prepare("lastfm", real_data / "lastfm" / "sdpo" / "lastfm-val.json", d, limit=12)
    examples, items = load_examples(d), load_items(d)

    class Client(LLMClient):
        def generate(self, prompts, n=1, **kw):
            out = []
            for p in prompts:
                ex = next(e for e in examples if all(items[c].title in p for c in e.candidates)
                          and all(items[h].title in p for h in e.context))
                target = next(iter(ex.relevant()))
                others = [c for c in ex.candidates if c != target][:2]
                names = [items[i].title for i in [target, *others]]
                good = int(ex.id.rsplit(":", 1)[1]) % 2 == 0
                out.append(["Key Preferences: energy\n" + "\n".join(
                    f"{k}. {name} - fits" for k, name in enumerate(names, 1))
                    if good else "I cannot help with that."] * n)
            return out

    monkeypatch.setattr(llm_ranker, "make_client", lambda spec: Client())
    out = tmp_path / "t.json"
    rc, text, _ = run_eval(capsys, "--examples", str(d), "--methods", "llm:stand-in",
                           "--no-diversity", "--out", str(out))
    assert rc == 0
    m = rows_by_method(out)["llm:stand-in"]["metrics"]
    assert m["valid_ratio"]["mean"] == 0.5 and m["hit@1"]["mean"] == 0.5
    assert m["explainability"]["mean"] is not None and "| LLM-based | llm:stand-in |" in text


def test_limit_takes_the_first_examples_that_pass_the_held_out_check(lastfm_dirs, tmp_path,
                                                                      capsys):
    """A chance duplicate (a training row's history and target, no user) planted first in the
    evaluation file is excluded on the whole file, then --limit takes the next examples."""
    from dataclasses import replace

    from reclaif.data import load_examples

    train, valid = lastfm_dirs
    planted = replace(load_examples(train)[5], id="planted", user=None, split="valid")
    rows = [planted] + load_examples(valid)
    d = tmp_path / "valid"
    d.mkdir()
    (d / "items.jsonl").write_text((valid / "items.jsonl").read_text())
    (d / "examples.jsonl").write_text("".join(json.dumps(ex.to_json()) + "\n" for ex in rows))
    out = tmp_path / "t.json"
    rc, text, _ = run_eval(capsys, "--examples", str(d), "--train", str(train), "--methods",
                           "random", "--limit", "5", "--no-diversity", "--bootstrap", "50",
                           "--out", str(out))
    assert rc == 0
    table = json.loads(out.read_text())
    assert table["eval"]["n"] == 5 and table["eval"]["n_split"] == len(rows)
    assert f"the first 5 of {len(rows):,} (--limit 5)" in text
    assert f"1 of {len(rows):,} evaluation examples" in text and "(planted)" in text
    assert rows_by_method(out)["random"]["metrics"]["hit@1"]["count"] == 5


@pytest.fixture(scope="module")
def run_checkpoint(repo_root: Path, tmp_path_factory) -> Path:
    """A tiny random model laid out as a run's checkpoint (runs/NAME/iter-002/checkpoint), the
    run trained on the bundled sample's 'train' split as the quickstart config says."""
    from reclaif.config_load import load_config
    from reclaif.llm.models import build_tiny_model
    from reclaif.pipeline.store import RunStore

    root = tmp_path_factory.mktemp("runs") / "tiny-run"
    store = RunStore(root)
    store.freeze_config(load_config(repo_root / "configs" / "quickstart.yaml",
                                    ["evidence.mode=none"]))
    store.mark_done("iter-002/train")
    return build_tiny_model(store.checkpoint("iter-002"), tie=False)


def test_model_checkpoint_row_and_its_runs_training_input(run_checkpoint, capsys, tmp_path):
    out = tmp_path / "t.json"
    method = f"model:{run_checkpoint}"
    rc, text, _ = run_eval(capsys, "--examples", "sample", "--split", "valid", "--methods",
                           method, "--limit", "3", "--max-new-tokens", "8", "--no-diversity",
                           "--bootstrap", "50", "--out", str(out))
    assert rc == 0
    row = rows_by_method(out)[method]
    m = row["metrics"]
    assert m["valid_ratio"]["count"] == 3 and m["hit@1"]["count"] == 3
    assert len(row["answers"]) == 3 and all(a["raw_text"] for a in row["answers"])
    assert f"| LLM-based | {method} |" in text
    assert f"run {run_checkpoint.parent.parent} 'train' split of sample" in text
    # evaluated on the run's own training examples: refused before any generation
    rc, _, err = run_eval(capsys, "--examples", "sample", "--split", "train", "--methods",
                          method, "--limit", "3", "--no-diversity")
    assert rc == 2 and "held-out check" in err and "is also a run" in err


def test_model_outside_a_run_directory_is_said_to_be_unchecked(run_checkpoint, capsys,
                                                                tmp_path):
    import shutil

    bare = tmp_path / "bare-model"
    shutil.copytree(run_checkpoint, bare)
    rc, text, _ = run_eval(capsys, "--examples", "sample", "--split", "valid", "--methods",
                           f"model:{bare}", "--limit", "2", "--max-new-tokens", "4",
                           "--no-diversity", "--bootstrap", "20")
    assert rc == 0 and f"not checked: model:{bare}" in text
