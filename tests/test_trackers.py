"""`report.trackers`: the training curves reach TensorBoard's event files and W&B's offline run
files (read back with each library's own format), an empty list writes neither, and a name that
is not a tracker stops at config load."""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from reclaif.config_load import load_config
from reclaif.errors import ConfigError
from reclaif.train.session import TrainLog

STEPS = [{"loss": 0.69, "rewards/margins": 0.0}, {"loss": 0.61, "rewards/margins": 0.2},
         {"loss": 0.52, "rewards/margins": 0.45}]


def _log_three_steps(tlog: TrainLog) -> None:
    for step, scalars in enumerate(STEPS, start=1):
        tlog.step(step, scalars)
    tlog.close()


def _wandb_records(path: Path):
    """The protobuf Records of a W&B transaction log (.wandb): a 7-byte header (":W&B", magic,
    version), then LevelDB's log format, 32 KiB blocks of chunks (crc32 u32, length u16,
    type u8: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # block trailer / zero padding
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _history(records) -> list[dict]:
    """One dict per logged step: {metric key: value} (W&B may store "a/b" as a nested key)."""
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json)
             for item in r.history.item} for r in records
            if r.WhichOneof("record_type") == "history"]


def test_tensorboard_event_files_hold_every_logged_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log_three_steps(TrainLog(tmp_path, "iter-001", True, ["tensorboard"], "proof"))
    events = EventAccumulator(str(tmp_path / "tb" / "iter-001"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "train/rewards/margins"}
    for key in ("loss", "rewards/margins"):
        got = [(e.step, e.value) for e in events.Scalars(f"train/{key}")]
        assert got == [(s, pytest.approx(v[key])) for s, v in enumerate(STEPS, start=1)]


def test_wandb_offline_run_files_hold_every_logged_step(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    _log_three_steps(TrainLog(tmp_path / "run", "sft", True, ["wandb"], "proof"))

    [log] = (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(_wandb_records(log))
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.display_name, run.run_group, run.job_type, run.project) == \
        ("proof/sft", "proof", "sft", "reclaif")
    history = _history(records)
    assert [(h["_step"], h["train/loss"], h["train/rewards/margins"]) for h in history] == \
        [(s, v["loss"], v["rewards/margins"]) for s, v in enumerate(STEPS, start=1)]
    assert not (tmp_path / "run" / "tb").exists()  # only the trackers asked for


def test_no_trackers_writes_no_curves_but_keeps_the_history(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # would fail if anything imported it
    tlog = TrainLog(tmp_path, "sft", True, [], "proof")
    _log_three_steps(tlog)
    assert list(tmp_path.iterdir()) == []
    assert [h["loss"] for h in tlog.history] == [s["loss"] for s in STEPS]


def test_other_ranks_write_nothing(tmp_path):
    _log_three_steps(TrainLog(tmp_path, "sft", False, ["tensorboard"], "proof"))
    assert list(tmp_path.iterdir()) == []


def test_a_tracker_that_is_not_one_is_a_config_error_naming_the_field():
    assert load_config(None, ["report.trackers=[]"]).report.trackers == []
    assert load_config(None, ["report.trackers=[tensorboard, wandb]"]).report.trackers == \
        ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match=r"report\.trackers\[1\]: 'mlflow' is not one of "
                                          r"\['tensorboard', 'wandb'\]"):
        load_config(None, ["report.trackers=[tensorboard, mlflow]"])


def test_a_frozen_config_with_the_retired_examples_shown_still_loads(tmp_path):
    from reclaif.atomic import atomic_write_text
    from reclaif.config_load import dump_config

    text = dump_config(load_config(None, [])).replace(
        "report:\n", "report:\n  examples_shown: 3\n")
    assert "examples_shown: 3" in text
    atomic_write_text(tmp_path / "config.yaml", text)
    assert not hasattr(load_config(tmp_path / "config.yaml").report, "examples_shown")
    with pytest.raises(ConfigError, match="unknown config key 'report.example_shown'"):
        load_config(None, ["report.example_shown=3"])


def test_the_sft_recipe_sends_its_curves_to_the_configured_trackers(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    sys.path.insert(0, str(Path(__file__).parent))
    from train_run import make_run_dir

    from reclaif.llm.models import build_tiny_model
    from reclaif.train.sft import run_sft

    monkeypatch.delenv("WANDB_DIR", raising=False)  # default: under the run directory
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = make_run_dir(tmp_path / "run", build_tiny_model(tmp_path / "tiny"), [
        "name=proof", "report.trackers=[wandb]", "sft.epochs=1", "sft.batch_size=3",
        "sft.max_length=128", "sft.save_every_steps=100"])
    metrics = run_sft(load_config(run / "config.yaml"), run)
    assert not (run / "tb").exists()
    [log] = (run / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(_wandb_records(log))
    [name] = [r.run.display_name for r in records if r.WhichOneof("record_type") == "run"]
    losses = [h["train/loss"] for h in _history(records)]
    assert name == "proof/sft" and len(losses) == metrics["steps"] == 2
    assert losses[0] == pytest.approx(metrics["loss_first_step"])
