"""What a run directory refuses (issue 34): a second driver, writes outside it, stage names it
did not write, a config that would put it anywhere; and the eval CLI's bad numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reclaif.cli import main
from reclaif.config_load import load_config
from reclaif.errors import ConfigError, ReclaifError
from reclaif.pipeline.report import stages, table_markdown
from reclaif.pipeline.store import RunStore
from reclaif.run_layout import iteration_dirs

ROOT = Path(__file__).resolve().parents[1]


def _eval_json(path: Path, hit: float) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "eval.json").write_text(json.dumps({
        "metrics": {"valid_ratio": 1.0, "hit@1": hit}, "n_examples": 2,
        "per_example": {"ids": ["a", "b"], "hit@1": [1, 0], "valid": [1, 1]}}))


def test_a_users_backup_beside_the_iterations_is_not_a_stage(tmp_path):
    for name, hit in (("sft", 0.5), ("iter-001", 0.5), ("iter-010", 1.0), ("iter-002.bak", 0.0),
                      ("iter-old", 0.0)):
        _eval_json(tmp_path / name, hit)
    (tmp_path / "iter-003").write_text("a file, not a stage")
    assert [p.name for p in iteration_dirs(tmp_path)] == ["iter-001", "iter-010"]  # as numbers
    assert [s for s, _ in stages(tmp_path)] == ["sft", "iter-001", "iter-010"]
    table = table_markdown(tmp_path)
    assert "DPO-Iter10" in table and "bak" not in table and "old" not in table


_HOLD = textwrap.dedent("""
    import sys, time
    from reclaif.pipeline.store import RunStore
    with RunStore(sys.argv[1]).exclusive():
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_second_driver_is_refused_naming_the_holder_and_the_lock_dies_with_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(ReclaifError, match=f"another reclaif driver.*pid {child.pid} on "):
            with RunStore(tmp_path).exclusive():
                pass
    finally:
        child.kill()  # SIGKILL: no cleanup runs, and the kernel still releases the lock
        child.wait()
    with RunStore(tmp_path).exclusive():
        assert f"pid {os.getpid()} " in (tmp_path / ".lock").read_text()


def test_report_refuses_a_directory_no_run_wrote(tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "report.md").write_text("my own notes")
    assert main(["report", "--run-dir", str(notes)]) != 0
    assert "not a run directory" in capsys.readouterr().err
    assert (notes / "report.md").read_text() == "my own notes"
    assert main(["report", "--run-dir", str(tmp_path / "typo")]) != 0
    assert not (tmp_path / "typo").exists()


def test_the_lifecycle_log_is_not_written_through_a_symlink(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("")
    run = tmp_path / "run"
    run.mkdir()
    (run / "lifecycle.jsonl").symlink_to(outside)
    with pytest.raises(ReclaifError, match="symbolic link"):
        RunStore(run).append_event("samplers:up")
    assert outside.read_text() == ""
    (run / "lifecycle.jsonl").unlink()
    RunStore(run).append_event("samplers:up", actors=1)
    assert json.loads((run / "lifecycle.jsonl").read_text())["actors"] == 1


@pytest.mark.parametrize("override, message", [
    ("name=../elsewhere", "plain directory name"), ("name=/tmp/x", "plain directory name"),
    ("name=..", "plain directory name"), ("seed=99999999999999999999999", r"seed: .* \[0, 2\*\*32\)"),
    ("dpo.seed=-1", "dpo.seed"), ("dpo.iterations=1000000000000000000", "dpo.iterations"),
])
def test_configs_that_would_misplace_or_break_a_run_fail_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "configs/quickstart.yaml", [override])


def test_eval_refuses_negative_numbers_and_overwriting_its_input(tmp_path, capsys):
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"id": "x", "items": []}\n')
    for flag in (["--top-k", "-2"], ["--limit", "-300"], ["--top-k", "0"]):
        with pytest.raises(SystemExit) as e:
            main(["eval", "--examples", "sample", "--predictions", str(preds), *flag])
        assert e.value.code == 2
    assert main(["eval", "--examples", "sample", "--predictions", str(preds),
                 "--out", str(preds)]) != 0
    assert "would replace the predictions" in capsys.readouterr().err
    assert preds.read_text() == '{"id": "x", "items": []}\n'


@pytest.mark.parametrize("where", ["mkstemp", "replace"])
def test_a_failed_write_names_the_target_not_its_temporary_file(tmp_path, monkeypatch, where):
    import errno
    import tempfile

    from reclaif import atomic

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied",
                              str(tmp_path / ".report.md.wno05ovs.tmp"))

    monkeypatch.setattr(tempfile if where == "mkstemp" else os,
                        "mkstemp" if where == "mkstemp" else "replace", refuse)
    with pytest.raises(PermissionError) as e:
        atomic.atomic_write_text(tmp_path / "report.md", "x")
    assert e.value.filename == str(tmp_path / "report.md")
    assert not list(tmp_path.glob(".report.md.*"))


def test_a_huge_title_is_cut_in_the_prompt():
    from reclaif.prompts import MAX_TITLE_CHARS, display_item
    from reclaif.records import Item

    items = {"x": Item(id="x", title="La " * 40_000, fields={})}
    shown = display_item("x", items, "music")
    assert len(shown) == MAX_TITLE_CHARS and shown.endswith("…")


def test_model_output_cannot_close_its_fence_or_reach_the_report_raw(tmp_path):
    from reclaif.pipeline.report import write_report

    (tmp_path / "config.yaml").write_text("name: x\n")
    nasty = "```\n# Injected heading\n<script>alert(1)</script>\x1b]0;title\x07\x1b[2Jdone ````"
    for stage in ("sft", "iter-001"):
        _eval_json(tmp_path / stage, 0.5)
        (tmp_path / stage / "predictions.jsonl").write_text(json.dumps(
            {"id": "a", "items": [], "valid": False, "raw_text": nasty}) + "\n")
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "\x1b" not in md and "\x07" not in md
    block = md.split("**SFT:**\n\n", 1)[1]
    fence = block.split("\n", 1)[0]
    assert set(fence) == {"`"} and len(fence) == 5  # longer than the answer's ```` run
    body = block.split("\n", 1)[1].split("\n" + fence + "\n", 1)[0]
    assert "# Injected heading" in body  # inside the fence, as text
    html = (tmp_path / "report.html").read_text()
    assert "<script>alert" not in html and "\x1b" not in html


def test_audit_refuses_a_choice_that_is_not_a_b_or_tie(tmp_path):
    from reclaif.errors import DataError
    from reclaif.judge.audit import read_rows

    f = tmp_path / "verdicts.jsonl"
    f.write_text(json.dumps({"example_id": "x", "verdict": {"choice": "zzz"}}) + "\n")
    with pytest.raises(DataError, match=r"row 1: verdict choice 'zzz'"):
        read_rows(f)


def test_a_first_start_on_bad_input_freezes_nothing(tmp_path):
    from reclaif.pipeline.driver import Driver

    run = tmp_path / "run"
    junk = tmp_path / "passwd"  # a file that exists but is no dataset (the probe: /etc/passwd)
    junk.write_text("root:x:0:0:root:/root:/bin/bash\n")
    bad = load_config(ROOT / "configs/quickstart.yaml", [f"data.path={junk}"])
    with pytest.raises(ReclaifError):
        Driver(bad, run)
    assert not (run / "config.yaml").exists() and not (run / "manifest.json").exists()
    good = load_config(ROOT / "configs/quickstart.yaml")
    Driver(good, run)  # the corrected rerun starts (it would be "another config" otherwise)
    assert (run / "config.yaml").exists()
