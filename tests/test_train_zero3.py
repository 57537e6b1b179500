"""DPO under DeepSpeed ZeRO-3 on TWO CPU processes (torchrun, gloo), through the real entry point
`reclaif train dpo`: killed mid-epoch (SIGKILL after step 3), rerun, it resumes from the step-2
training state, its loss falls, and its gathered checkpoint reloads with transformers."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_run import make_run_dir  # noqa: E402

from reclaif.llm.models import build_tiny_model

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(run: Path, fault_dir: Path, faults: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
           "RECLAIF_FAULTS": faults, "RECLAIF_FAULT_DIR": str(fault_dir)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "reclaif.cli", "train", "dpo",
           "--run-dir", str(run), "--iteration", "1"]
    # own session, so a timeout kills the workers too, not just the launcher
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun timed out after 300 s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_zero3_dpo_on_two_processes_resumes_after_a_crash_and_learns(tmp_path):
    from transformers import AutoModelForCausalLM

    tiny = build_tiny_model(tmp_path / "tiny")
    run = make_run_dir(tmp_path / "run", tiny, [
        "sft.enabled=false", "dpo.engine=deepspeed",
        "dpo.deepspeed_config=configs/deepspeed/zero3_cpu.json", "dpo.lr=1.0e-3",
        "dpo.batch_size=1", "dpo.epochs=3", "dpo.max_length=160", "dpo.save_every_steps=2",
        "dpo.gradient_checkpointing=true"])
    it = run / "iter-001"

    crashed = _torchrun(run, tmp_path / "faults", "dpo:step:3")
    assert crashed.returncode != 0, crashed.stderr[-3000:]
    assert (it / "train_state" / "step-2" / "meta.json").exists(), crashed.stderr[-3000:]
    assert len(list((it / "train_state" / "step-2").glob("zero-rank*.safetensors"))) == 2
    assert not (it / "checkpoint").exists()
    assert len((it / "ref_logps.jsonl").read_text().splitlines()) == 6

    done = _torchrun(run, tmp_path / "faults", "dpo:step:3")  # the fault fires only once
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stderr and "step 2" in done.stderr
    metrics = json.loads((it / "train_metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["engine"] == "deepspeed"
    assert metrics["steps"] == metrics["total_steps"] == 9  # 3 per epoch, 6 pairs / 2 ranks
    losses = metrics["epoch_losses"]
    assert losses[0] == pytest.approx(0.693, abs=0.03)  # policy == reference at the start
    assert losses[2] < losses[0] - 0.03, losses
    assert metrics["rewards/accuracies"] > 0.5 and metrics["rewards/margins"] > 0

    model = AutoModelForCausalLM.from_pretrained(it / "checkpoint", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    w, b = model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight
    assert w.shape == b.shape and not torch.equal(w, b)  # full weights, gathered and trained


@pytest.mark.slow
def test_sft_then_dpo_in_one_process_under_deepspeed(tmp_path, monkeypatch):
    """The in-process driver runs SFT and then DPO in one process: the second DeepSpeed engine
    must not inherit the first phase's destroyed process group (it did, before Strategy.close
    reset DeepSpeed's cached world group)."""
    from reclaif.config_load import load_config
    from reclaif.train.dpo import run_dpo
    from reclaif.train.sft import run_sft

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    model = build_tiny_model(tmp_path / "tiny")
    ds = [f"{phase}.{k}" for phase in ("sft", "dpo") for k in
          ("engine=deepspeed", "deepspeed_config=configs/deepspeed/zero3_cpu.json",
           "batch_size=3", "max_length=160", "epochs=1")]
    run = make_run_dir(tmp_path / "run", model, ["sft.lr=3.0e-3", "dpo.lr=1.0e-3", *ds])
    cfg = load_config(run / "config.yaml")
    sft = run_sft(cfg, run)
    dpo = run_dpo(cfg, run, 1)
    assert sft["engine"] == dpo["engine"] == "deepspeed"
    assert sft["loss"] < sft["loss_first_step"] and dpo["steps"] == 2
    assert (run / "iter-001" / "checkpoint" / "model.safetensors").exists()
