"""The run store trusts nothing on disk for existing: a shard or output is done only when it
matches what was recorded as it was written, and a SIGKILL at any write, or a shard cut at any
byte, still yields exactly the result of an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from reclaif.config_load import load_config
from reclaif.errors import ConfigError, ReclaifError
from reclaif.pipeline.store import RunStore

ROWS = [{"example_id": f"e{i}", "verdict": {"choice": "A" if i % 2 else "B"}} for i in range(6)]


def test_a_verdict_shard_that_lost_lines_is_redone_not_merged(tmp_path):
    store = RunStore(tmp_path / "run")
    shard_dir = tmp_path / "run/iter-001/verdict_shards"
    store.write_shard(shard_dir, 0, ROWS)
    assert store.shard_done(shard_dir, 0)
    path = store.shard_path(shard_dir, 0)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:3]))
    assert not store.shard_done(shard_dir, 0)
    with pytest.raises(ReclaifError, match=r"shard-00000.jsonl: .*not merged. Rerun"):
        store.merge_shards(shard_dir, 1, tmp_path / "run/iter-001/verdicts.jsonl")
    assert not (tmp_path / "run/iter-001/verdicts.jsonl").exists()


def test_a_shard_cut_at_any_byte_or_edited_is_not_done(tmp_path):
    store = RunStore(tmp_path / "run")
    shard_dir = tmp_path / "run/shards"
    store.write_shard(shard_dir, 0, ROWS)
    path = store.shard_path(shard_dir, 0)
    whole = path.read_bytes()
    for cut in range(len(whole)):
        path.write_bytes(whole[:cut])
        assert not store.shard_done(shard_dir, 0), cut
    path.write_bytes(whole.replace(b'"e3"', b'"zz"'))  # same length, unknown example id
    assert not store.shard_done(shard_dir, 0)
    path.write_bytes(whole)
    assert store.shard_done(shard_dir, 0)
    store.shard_record_path(shard_dir, 0).unlink()  # killed between the shard and its record
    assert not store.shard_done(shard_dir, 0)


def test_a_phase_whose_output_changed_is_not_done(tmp_path):
    store = RunStore(tmp_path / "run")
    out = tmp_path / "run/iter-001/samples.jsonl"
    store.write_shard(out.parent, 0, ROWS)
    store.merge_shards(out.parent, 1, out)
    store.mark_done("iter-001/sample", [out], count=6)
    assert store.is_done("iter-001/sample")
    out.write_text(out.read_text()[:-10])
    assert not store.is_done("iter-001/sample")
    weights = tmp_path / "run/sft/checkpoint/model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"w" * 1000)
    store.mark_done("sft/train", [weights])
    weights.write_bytes(b"")  # a power loss kept the manifest, lost the weights
    assert not store.is_done("sft/train")


@pytest.mark.parametrize("name", ["manifest.json", "config.yaml"])
def test_a_truncated_run_file_is_one_line_naming_it(tmp_path, name):
    store = RunStore(tmp_path / "run")
    store.freeze_config(load_config(None))
    store.mark_done("base/eval")
    f = tmp_path / "run" / name
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    with pytest.raises(ReclaifError, match=f"{name}: (damaged|does not match)") as err:
        RunStore(tmp_path / "run").freeze_config(load_config(None))
    assert "\n" not in str(err.value)


def test_a_truncated_timings_file_is_moved_aside(tmp_path):
    store = RunStore(tmp_path / "run")
    store.freeze_config(load_config(None))
    store.record_timing("base/eval", 1.0)
    (tmp_path / "run/timings.json").write_text('{"base/eval": 1')
    store.freeze_config(load_config(None))  # what every start does first
    assert not (tmp_path / "run/timings.json").exists()
    store.record_timing("sft/train", 2.0)
    assert json.loads((tmp_path / "run/timings.json").read_text()) == {"sft/train": 2.0}


def test_the_frozen_config_includes_the_datasets_content(tmp_path):
    import shutil

    from reclaif.data import SAMPLE_DIR

    data = Path(shutil.copytree(SAMPLE_DIR, tmp_path / "data"))
    cfg = load_config(None, [f"data.path={data}"])
    store = RunStore(tmp_path / "run")
    store.freeze_config(cfg)
    assert store.manifest()["frozen"]["dataset"]["examples.jsonl"]
    store.freeze_config(cfg)
    lines = (data / "examples.jsonl").read_text().splitlines(keepends=True)
    (data / "examples.jsonl").write_text("".join(lines[:-1]))
    with pytest.raises(ConfigError, match=r"the dataset changed since this run started "
                                          r"\(examples.jsonl: .*use a new --run-dir"):
        store.freeze_config(cfg)


# ------------------------------------------------------------------- SIGKILL at every write
def _judge_then_pairs(run_dir: Path) -> None:
    """Two phases the way the driver runs them: per-shard results written as shards (a done
    shard skipped), merged, the phase marked done; then pairs from the merged verdicts."""
    from reclaif.atomic import atomic_write_jsonl, read_jsonl

    store = RunStore(run_dir)
    data = run_dir.parent / "data"  # freeze_config hashes it; small, so the test stays fast
    if not data.exists():
        data.mkdir(parents=True)
        (data / "examples.jsonl").write_text('{"id": "e0"}\n')
        (data / "items.jsonl").write_text('{"id": "i0", "title": "t"}\n')
    store.freeze_config(load_config(None, [f"data.path={data}"]))
    shard_dir = store.root / "iter-001/verdict_shards"
    rows = [{"example_id": f"e{i}", "choice": "A" if i % 3 else "tie"} for i in range(7)]
    shards = [rows[i:i + 3] for i in range(0, len(rows), 3)]
    if not store.is_done("iter-001/judge"):
        for i, shard in enumerate(shards):
            if not store.shard_done(shard_dir, i):
                store.write_shard(shard_dir, i, [{**r, "judged": True} for r in shard])
        out = store.root / "iter-001/verdicts.jsonl"
        verdicts = store.merge_shards(shard_dir, len(shards), out)
        store.mark_done("iter-001/judge", [out], count=len(verdicts))
    if not store.is_done("iter-001/pairs"):
        out = store.root / "iter-001/pairs.jsonl"
        atomic_write_jsonl(out, [v for v in read_jsonl(out.parent / "verdicts.jsonl")
                                 if v["choice"] != "tie"])
        store.mark_done("iter-001/pairs", [out])
        store.record_timing("iter-001/pairs", 0.0)


class _Killer:
    """Counts file operations (each write of a file's bytes, fsync, rename) and SIGKILLs the
    process at the k-th; with `cut`, a write first puts half its bytes on disk."""

    def __init__(self, kill_at: int, cut: bool) -> None:
        self.kill_at, self.cut, self.ops = kill_at, cut, 0
        self.writes: list[int] = []  # which operations were writes (only those can be cut)

    def tick(self, write: bool = False) -> bool:
        self.ops += 1
        if write:
            self.writes.append(self.ops)
        return self.ops == self.kill_at

    def install(self, monkeypatch) -> None:
        import io

        real_write, real_fsync, real_replace = io.BufferedWriter.write, os.fsync, os.replace
        killer = self

        class Writer(io.BufferedWriter):
            def write(self, data):  # noqa: D102
                if killer.tick(write=True):
                    if killer.cut:
                        real_write(self, bytes(data)[: len(data) // 2])
                        self.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_write(self, data)

        real_fdopen = os.fdopen

        def fdopen(fd, mode="r", *a, **k):
            if "w" in mode:
                return Writer(io.FileIO(fd, "w", closefd=True))
            return real_fdopen(fd, mode, *a, **k)

        def fsync(fd):
            if killer.tick():
                os.kill(os.getpid(), signal.SIGKILL)
            return real_fsync(fd)

        def replace(a, b):
            if killer.tick():
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(a, b)

        monkeypatch.setattr(os, "fdopen", fdopen)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)


def _in_child(fn, *args) -> int:
    """Runs fn(*args) in a forked child; returns its wait status (signal or exit code)."""
    pid = os.fork()
    if pid == 0:
        try:
            fn(*args)
        except BaseException:
            import traceback

            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def test_sigkill_at_every_file_operation_then_rerun_equals_the_clean_run(tmp_path, monkeypatch):
    counter = _Killer(0, False)

    def clean(run_dir: Path) -> None:
        with pytest.MonkeyPatch.context() as mp:
            counter.install(mp)
            _judge_then_pairs(run_dir)
        Path(run_dir / "ops.json").write_text(json.dumps([counter.ops, counter.writes]))

    assert _in_child(clean, tmp_path / "clean/run") == 0
    total, writes = json.loads((tmp_path / "clean/run/ops.json").read_text())
    want = (tmp_path / "clean/run/iter-001/pairs.jsonl").read_bytes()
    assert total > 20 and want.count(b"\n") == 4

    def killed(run_dir: Path, k: int, cut: bool) -> None:
        with pytest.MonkeyPatch.context() as mp:
            _Killer(k, cut).install(mp)
            _judge_then_pairs(run_dir)

    for cut, points in ((False, range(1, total + 1)), (True, writes)):
        for k in points:
            run = tmp_path / f"run-{k}-{cut}" / "run"
            assert _in_child(killed, run, k, cut) == -signal.SIGKILL, (k, cut)
            assert _in_child(_judge_then_pairs, run) == 0, (k, cut)
            assert (run / "iter-001/pairs.jsonl").read_bytes() == want, (k, cut)
            m = json.loads((run / "manifest.json").read_text())
            assert m["phases"]["iter-001/judge"]["count"] == 7, (k, cut)


def test_reclaif_report_on_damaged_run_files_is_one_line(tmp_path, capsys):
    from reclaif.atomic import atomic_write_json
    from reclaif.cli import main

    run = tmp_path / "run"
    RunStore(run).freeze_config(load_config(None))
    atomic_write_json(run / "base/eval.json", {"metrics": {}, "stage": "base"})
    (run / "timings.json").write_text('{"base/eval": 4')
    assert main(["report", "--run-dir", str(run)]) == 0  # timings only inform: left out
    (run / "base/eval.json").write_bytes(b'{"metrics": {')
    assert main(["report", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'base/eval.json'}: damaged" in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["manifest.json", "evidence/baselines.json"])
def test_reclaif_report_on_a_damaged_manifest_or_baselines_is_one_line(tmp_path, capsys, name):
    from reclaif.atomic import atomic_write_json
    from reclaif.cli import main

    run = tmp_path / "run"
    store = RunStore(run)
    store.freeze_config(load_config(None))
    store.mark_done("evidence", description="d", windows=1, folds=2)
    atomic_write_json(run / "evidence/baselines.json", {"random": {"metrics": {}}})
    assert main(["report", "--run-dir", str(run)]) == 0
    f = run / name
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    capsys.readouterr()
    assert main(["report", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{f}: damaged" in err and "Traceback" not in err
    assert len([x for x in err.splitlines() if x.startswith("reclaif: error:")]) == 1


def test_a_report_reads_a_non_utf8_config_without_a_traceback(tmp_path, capsys):
    from reclaif.cli import main

    run = tmp_path / "run"
    RunStore(run).freeze_config(load_config(None))
    (run / "config.yaml").write_bytes((run / "config.yaml").read_bytes() + b"# caf\xe9\n")
    assert main(["report", "--run-dir", str(run)]) == 0


@pytest.mark.parametrize("command", [["run"], ["train", "sft"], ["train", "dpo", "--iteration", "1"]])
def test_a_cut_frozen_config_is_named_damaged_by_every_command_that_reads_it(tmp_path, capsys,
                                                                             command):
    """Cut in half, config.yaml still parses (as a half config); every reader checks it
    against the sha256 the manifest recorded first, so the one line says it is damaged."""
    from reclaif.cli import main

    run = tmp_path / "run"
    RunStore(run).freeze_config(load_config(None))
    f = run / "config.yaml"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    assert main([*command, "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("reclaif: error:")]
    assert lines == [f"reclaif: error: {f}: does not match the config this run was frozen with "
                     "(damaged or edited); restore it, or start a new --run-dir"], err


def test_the_driver_records_a_phase_time_over_a_damaged_timings_file(tmp_path):
    import time

    from reclaif.pipeline.driver import Driver

    driver = Driver(load_config(None), tmp_path / "run")
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run/timings.json").write_text('{"base/eval": 4')
    driver._timed("sft/train", time.time() - 2)
    assert set(json.loads((tmp_path / "run/timings.json").read_text())) == {"sft/train"}
    assert (tmp_path / "run/timings.json.damaged").exists()


# ------------------------------------------------------------------- durable renames
def _fsync_log(monkeypatch) -> list[tuple[str, str]]:
    """Records ('fsync', path of the fd) and ('replace', destination) in the order they happen."""
    import stat

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append((f"fsync-{kind}", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", str(Path(b).resolve())))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fds")
def test_an_atomic_write_fsyncs_the_file_before_and_its_directory_after_the_rename(
        tmp_path, monkeypatch):
    from reclaif.atomic import atomic_write_json

    events = _fsync_log(monkeypatch)
    target = (tmp_path / "run/manifest.json")
    atomic_write_json(target, {"phases": {}})
    kinds = [e[0] for e in events]
    assert kinds == ["fsync-file", "replace", "fsync-dir"], events
    assert events[1][1] == str(target.resolve()) and events[2][1] == str(target.parent.resolve())


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fds")
def test_a_checkpoint_directory_is_fsynced_whole_before_it_is_published(tmp_path, monkeypatch):
    """safetensors and save_pretrained do not fsync: the checkpoint's files and directory are
    fsynced before the rename that makes it the checkpoint, its parent after."""
    from reclaif.train.checkpoint import _replace_dir

    tmp = tmp_path / "sft/.tmp-ckpt"
    (tmp / "sub").mkdir(parents=True)
    for name in ("model.safetensors", "config.json", "sub/tokenizer.json"):
        (tmp / name).write_bytes(b"x" * 10)
    target = tmp_path / "sft/checkpoint"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    events = _fsync_log(monkeypatch)
    _replace_dir(tmp, target)
    published = events.index(("replace", str(target.resolve())))
    synced = {p for k, p in events[:published] if k.startswith("fsync")}
    assert {str((tmp / n).resolve()) for n in ("model.safetensors", "config.json",
                                                "sub/tokenizer.json", "sub", ".")} <= synced
    assert ("fsync-dir", str(target.parent.resolve())) in events[published:]
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "sub"]


def test_a_full_disk_during_an_atomic_write_names_the_file_it_was_writing(tmp_path, monkeypatch,
                                                                          capsys):
    """write()/fsync() on a full disk raise an OSError naming no file; the one CLI line must
    name it, and the old file stays."""
    import errno

    from reclaif.atomic import atomic_write_json
    from reclaif.cli import main

    run = tmp_path / "run"
    RunStore(run).freeze_config(load_config(None))
    before = (run / "manifest.json").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as err:
        atomic_write_json(run / "manifest.json", {"phases": {}})
    assert err.value.filename == str(run / "manifest.json") and err.value.errno == errno.ENOSPC
    assert (run / "manifest.json").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert main(["report", "--run-dir", str(run)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"reclaif: error: cannot write {run}/report")
    assert "No space left on device" in lines[0]


@pytest.mark.parametrize("phase", ["sft", "dpo"])
def test_a_trainers_damaged_metrics_file_is_one_line_naming_it(tmp_path, phase):
    """A finished phase's train_metrics.json cut short: resuming names it, no traceback."""
    from reclaif.train.dpo import run_dpo
    from reclaif.train.sft import run_sft

    d = tmp_path / ("sft" if phase == "sft" else "iter-001")
    (d / "checkpoint").mkdir(parents=True)
    (d / "checkpoint" / "config.json").write_text("{}")
    (d / "train_metrics.json").write_text('{"loss": 0.6')
    with pytest.raises(ReclaifError, match=r"train_metrics.json: damaged") as err:
        if phase == "sft":
            run_sft(load_config(None), tmp_path)
        else:
            run_dpo(load_config(None), tmp_path, 1)
    assert "\n" not in str(err.value)


def test_a_damaged_train_state_meta_is_one_line_naming_it(tmp_path):
    from reclaif.train.checkpoint import load_train_state

    (tmp_path / "meta.json").write_bytes(b'{"engine": "torch", "st\xff')
    with pytest.raises(ReclaifError, match=r"meta.json: damaged, not UTF-8 JSON"):
        load_train_state(object(), tmp_path)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fds")
def test_the_default_model_cache_is_fsynced_whole_before_it_is_published(tmp_path, monkeypatch):
    """The converted default model (save_pretrained writes without fsync) is renamed into the
    cache only after its files and directory are on disk, its parent fsynced after: a power
    loss leaves no cache entry or a whole one, never config.json beside empty weights."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from reclaif.llm import models

    tok = AutoTokenizer.from_pretrained(models.default_model_dir())
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                         intermediate_size=32, num_attention_heads=2))
    target = tmp_path / "cache/smollm2"
    target.parent.mkdir()
    events = _fsync_log(monkeypatch)
    models._save_converted(model, tok, target)
    published = events.index(("replace", str(target.resolve())))
    synced = {Path(p).name for k, p in events[:published] if k == "fsync-file"}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= synced, synced
    assert ("fsync-dir", str(target.parent.resolve())) in events[published:]
    assert not list(target.parent.glob(".convert-*"))
