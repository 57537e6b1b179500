"""The SFT and DPO recipes in-process on a tiny Llama (torch engine): SFT lowers the loss on
response tokens only, checkpoints reload with transformers, a SIGUSR1-preempted run resumes at
the right step to the same weights, LoRA is merged on save, DPO writes its reference log-probs."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from train_run import make_run_dir  # noqa: E402

from reclaif.atomic import read_jsonl
from reclaif.config_load import load_config
from reclaif.llm.models import build_tiny_model, load_tokenizer
from reclaif.train import loop, session
from reclaif.train.data import BatchPlan, encode_sft, pad_batch
from reclaif.train.dpo import policy_and_reference, run_dpo
from reclaif.train.logprobs import model_sequence_logps
from reclaif.train.sft import run_sft, sft_step

SFT = ["sft.lr=3.0e-3", "sft.epochs=2", "sft.batch_size=2", "sft.max_length=160",
       "sft.save_every_steps=100", "dpo.lr=1.0e-3", "dpo.batch_size=3", "dpo.epochs=2",
       "dpo.max_length=160"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def sft_run(tiny, tmp_path_factory) -> tuple[Path, dict]:
    run = make_run_dir(tmp_path_factory.mktemp("sft") / "run", tiny, SFT)
    return run, run_sft(load_config(run / "config.yaml"), run)


def _hf_loss(model, batch, mask_prompt: bool) -> float:
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    if mask_prompt:
        labels = labels.masked_fill(batch["loss_mask"] == 0, -100)
    with torch.no_grad():
        return float(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           labels=labels).loss)


def _response_nll(model, examples, pad_id) -> float:
    batch = pad_batch(examples, pad_id)
    with torch.no_grad():
        s, n = model_sequence_logps(model, batch["input_ids"], batch["attention_mask"],
                                    batch["loss_mask"])
    return float(-s.sum() / n.sum())


def test_sft_loss_is_on_response_tokens_only_and_falls(sft_run, tiny):
    from transformers import AutoModelForCausalLM

    run, metrics = sft_run
    # auto: each micro-batch's common prompt head ran once (tests/test_sft_shared_head.py),
    # and the first step's loss below is still the whole rows'
    assert metrics["prompt_forward"] == "shared" and metrics["head_tokens_saved"] > 0
    cfg = load_config(run / "config.yaml")
    tok = load_tokenizer(str(tiny))
    examples = encode_sft(tok, read_jsonl(run / "sft" / "teacher.jsonl"), cfg.sft.max_length)
    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    first = pad_batch([examples[i] for i in BatchPlan(6, 2, seed=cfg.sft.seed).micro_batches(0)[0]],
                      tok.pad_token_id)
    # the first step's loss is HF's causal-LM loss with prompt labels ignored...
    assert metrics["loss_first_step"] == pytest.approx(_hf_loss(base, first, True), rel=1e-4)
    trained = AutoModelForCausalLM.from_pretrained(run / "sft" / "checkpoint", dtype=torch.float32)
    # ...and on a trained model (where the two differ) the recipe's loss is still that one
    with torch.no_grad():
        step_loss = float(sft_step(trained, first, 64))
    assert step_loss == pytest.approx(_hf_loss(trained, first, True), rel=1e-4)
    assert abs(step_loss - _hf_loss(trained, first, False)) > 0.5
    before = _response_nll(base, examples, tok.pad_token_id)
    after = _response_nll(trained, examples, tok.pad_token_id)
    assert after < before - 0.3, (before, after)
    assert metrics["steps"] == metrics["total_steps"] == 6 and not metrics["preempted"]
    assert metrics["epoch_losses"][1] < metrics["epoch_losses"][0]
    assert list((run / "tb" / "sft").glob("events.out.tfevents.*"))
    assert not (run / "sft" / "train_state").exists()


@pytest.mark.parametrize("phase", ["sft", "dpo"])
def test_sigusr1_saves_a_train_state_and_the_rerun_continues_at_the_right_step(
        phase, sft_run, tiny, tmp_path, monkeypatch):
    # Both recipes run the one loop of train/loop.py: cut by SIGUSR1 after step 2, each saves a
    # train state there and its rerun resumes at step 3 (SFT mid-epoch, DPO at an epoch's
    # start: 6 pairs in steps of 3), ending with the weights of an uninterrupted run.
    overrides = SFT + (["sft.enabled=false"] if phase == "dpo" else [])

    def train(run: Path) -> dict:
        cfg = load_config(run / "config.yaml")
        return run_sft(cfg, run) if phase == "sft" else run_dpo(cfg, run, 1)

    if phase == "sft":
        whole, stage = sft_run[0], "sft"
    else:
        whole, stage = make_run_dir(tmp_path / "whole", tiny, overrides), "iter-001"
        train(whole)
    run = make_run_dir(tmp_path / "run", tiny, overrides)
    steps: list[int] = []
    original = session.TrainLog.step

    def step_then_preempt(self, step, scalars):
        original(self, step, scalars)
        steps.append(step)
        if step == 2 and len(steps) == 2:
            os.kill(os.getpid(), signal.SIGUSR1)

    resumed: list[tuple[int, int, int]] = []
    resume = loop.resume

    def spy(*args):
        resumed.append(resume(*args))
        return resumed[-1]

    monkeypatch.setattr(session.TrainLog, "step", step_then_preempt)
    monkeypatch.setattr(loop, "resume", spy)
    cut = train(run)
    assert cut["preempted"] and cut["steps"] == 2
    assert json.loads((run / stage / "train_metrics.json").read_text())["preempted"]
    assert (run / stage / "train_state" / "step-2" / "meta.json").exists()
    assert not (run / stage / "checkpoint").exists()

    done = train(run)
    n = done["total_steps"]
    assert steps == list(range(1, n + 1))  # resumed at 3, nothing redone or skipped
    # (step, epoch, micro-batch) each run started from, through the shared loop's resume
    assert resumed == [(0, 0, 0), (2, 0, 2) if phase == "sft" else (2, 1, 0)]
    assert done["steps"] == n == (6 if phase == "sft" else 4) and not done["preempted"]
    assert not (run / stage / "train_state").exists()
    ref = load_file(str(whole / stage / "checkpoint" / "model.safetensors"))
    got = load_file(str(run / stage / "checkpoint" / "model.safetensors"))
    assert ref.keys() == got.keys()
    for k in ref:  # same data order, optimizer moments and schedule as the uninterrupted run
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)


def test_lora_is_merged_on_save_into_a_plain_model(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    run = make_run_dir(tmp_path / "run", tiny,
                       SFT + ["sft.lora_r=4", "sft.lora_alpha=8", "sft.epochs=1", "sft.lr=3.0e-2"])
    metrics = run_sft(load_config(run / "config.yaml"), run)
    assert metrics["lora_r"] == 4
    saved = load_file(str(run / "sft" / "checkpoint" / "model.safetensors"))
    base = load_file(str(tiny / "model.safetensors"))
    assert saved.keys() == base.keys()  # no lora_A/lora_B, no base_model.model prefix
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(saved[q], base[q])  # the adapters were merged in
    assert torch.equal(saved["model.norm.weight"], base["model.norm.weight"])  # frozen stays
    AutoModelForCausalLM.from_pretrained(run / "sft" / "checkpoint")


def test_dpo_writes_reference_logps_and_learns_the_preference(sft_run):
    src, _ = sft_run
    run = src  # iteration 1 trains from sft/checkpoint, which is also its reference
    cfg = load_config(run / "config.yaml")
    metrics = run_dpo(cfg, run, 1)
    rows = read_jsonl(run / "iter-001" / "ref_logps.jsonl")
    pairs = read_jsonl(run / "iter-001" / "pairs.jsonl")
    assert [r["example_id"] for r in rows] == [p["example_id"] for p in pairs]
    assert all(r["chosen"] < 0 and r["rejected"] < 0 for r in rows)
    assert metrics["loss_first_step"] == pytest.approx(math.log(2), abs=1e-4)  # policy == ref
    assert metrics["loss"] < metrics["loss_first_step"]
    assert metrics["rewards/margins"] > 0 and metrics["rewards/accuracies"] > 0.5
    assert metrics["reference"] == metrics["policy_init"] == str(run / "sft" / "checkpoint")
    assert (run / "iter-001" / "checkpoint" / "model.safetensors").exists()


def test_reference_is_the_sft_model_or_the_previous_iteration(tmp_path, tiny):
    cfg = load_config(None, [f"recommender.model={tiny}", "dpo.reference=previous"])
    pol, ref = policy_and_reference(cfg, tmp_path, 3)
    assert pol == ref == str(tmp_path / "iter-002" / "checkpoint")
    cfg = load_config(None, [f"recommender.model={tiny}", "dpo.reference=sft"])
    pol, ref = policy_and_reference(cfg, tmp_path, 3)
    assert (pol, ref) == (str(tmp_path / "iter-002" / "checkpoint"),
                          str(tmp_path / "sft" / "checkpoint"))
    cfg = load_config(None, [f"recommender.model={tiny}", "sft.enabled=false"])
    assert policy_and_reference(cfg, tmp_path, 1) == (str(tiny), str(tiny))


@pytest.mark.slow
def test_bench_train_quick_reports_the_three_variants_side_by_side(capsys):
    from reclaif.bench.train import run

    assert run(quick=True, as_json=True) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["tokens_per_s"]) == {"fused", "unfused", "recomputed"}
    assert all(v > 0 for v in out["tokens_per_s"].values())
    assert out["speedup_fused_vs_unfused"] > 0 and "tiny" in out["model"]


def test_schedule_warms_up_from_a_nonzero_first_step_and_decays():
    from reclaif.train.strategy import cosine_with_warmup

    def lrs(total: int) -> list[float]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
        sched, out = cosine_with_warmup(opt, total, 0.1), []
        for _ in range(total):
            out.append(opt.param_groups[0]["lr"])  # what this step uses
            opt.step()
            sched.step()
        return out

    # transformers' schedule would give the first step lr 0: half of a two-step DPO iteration.
    assert lrs(2) == pytest.approx([1.0, 2.0])
    assert lrs(4) == pytest.approx([1.0, 2.0, 1.5, 0.5])
    twenty = lrs(20)
    assert twenty[:3] == pytest.approx([2 / 3, 4 / 3, 2.0]) and min(twenty) > 0
    assert all(a >= b for a, b in zip(twenty[2:], twenty[3:]))


def test_logged_lr_is_the_rate_the_last_step_used():
    from reclaif.config import TrainConfig
    from reclaif.train.strategy import Strategy

    strategy = Strategy(TrainConfig(lr=2.0, warmup_ratio=0.1)).setup()
    model = torch.nn.Linear(2, 1)
    strategy.prepare(model, total_steps=4)
    assert strategy.step_lr() == pytest.approx(1.0)  # before any step: the first step's rate
    used = []
    for _ in range(3):
        used.append(strategy.optimizer.param_groups[0]["lr"])
        model(torch.ones(1, 2)).sum().backward()
        strategy.step()
        assert strategy.step_lr() == pytest.approx(used[-1])  # not the scheduler's next rate
    assert used == pytest.approx([1.0, 2.0, 1.5])
    strategy.close()


def test_bf16_dpo_first_step_has_loss_log2_and_zero_margins_with_a_bf16_reference(tmp_path, tiny):
    # The torch engine's bf16 on CPU (torch.autocast): the reference log-probs are computed
    # under the same autocast as the policy's forward, so at the first step policy == reference.
    run = make_run_dir(tmp_path / "run", tiny, SFT + ["sft.enabled=false", "dpo.bf16=true",
                                                      "dpo.epochs=1", "dpo.batch_size=2"])
    cfg = load_config(run / "config.yaml")
    metrics = run_dpo(cfg, run, 1)
    assert metrics["bf16"] is True and metrics["prompt_forward"] == "shared"
    assert metrics["loss_first_step"] == pytest.approx(math.log(2), abs=1e-4)
    assert metrics["margins_first_step"] == pytest.approx(0.0, abs=1e-3)
    # ...and the reference really is bf16: the stored values are the autocast ones (its first
    # batch recomputed exactly), not fp32's (an fp32 reference starts DPO off log 2 in bf16).
    from transformers import AutoModelForCausalLM

    from reclaif.records import PreferencePair
    from reclaif.train.data import encode_pairs
    from reclaif.train.reference import pair_logps

    rows = read_jsonl(run / "iter-001" / "ref_logps.jsonl")
    tok = load_tokenizer(str(tiny))
    pairs = [PreferencePair.from_json(r) for r in read_jsonl(run / "iter-001" / "pairs.jsonl")]
    enc = encode_pairs(tok, pairs, cfg.dpo.max_length)[:2]  # the reference's first batch
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    c, r = (pad_batch([e[k] for e in enc], tok.pad_token_id) for k in ("chosen", "rejected"))
    with torch.no_grad():  # the trainer's forward: sdpa here, so the prompt is shared
        fp32 = pair_logps(model, c, r, cfg.dpo.logprob_chunk, shared_prompt=True)[:, :2].double()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = pair_logps(model, c, r, cfg.dpo.logprob_chunk, shared_prompt=True)[:, :2].double()
    stored = torch.tensor([[row["chosen"], row["rejected"]] for row in rows[:2]],
                          dtype=torch.float64)
    assert torch.allclose(stored, bf16, rtol=0, atol=1e-6)
    assert (stored - fp32).abs().max() > 1e-3


def test_sft_loss_is_the_token_mean_over_the_accumulation_window(tmp_path, tiny, monkeypatch):
    # Two teacher answers of different lengths in one optimizer step: as two accumulated
    # micro-batches of one, or one micro-batch of two. The gradient and the logged loss must be
    # the same (the token mean over the step), not a mean of per-micro-batch means.
    from reclaif.train.strategy import Strategy

    grads, step = [], Strategy.step

    def capture(self):
        grads.append(torch.cat([p.grad.detach().flatten().clone()
                                for p in self.module.parameters() if p.grad is not None]))
        return step(self)

    monkeypatch.setattr(Strategy, "step", capture)
    losses = []
    for i, (bs, ga) in enumerate([(1, 2), (2, 1)]):
        run = make_run_dir(tmp_path / f"run{i}", tiny, SFT + [
            "sft.max_examples=2", "sft.epochs=1", f"sft.batch_size={bs}",
            f"sft.grad_accum={ga}", "sft.max_grad_norm=1.0e+9"])
        teacher = read_jsonl(run / "sft" / "teacher.jsonl")
        teacher[1]["response"] += " and also because of the very long reason here" * 4
        from reclaif.atomic import atomic_write_jsonl

        atomic_write_jsonl(run / "sft" / "teacher.jsonl", teacher)
        losses.append(run_sft(load_config(run / "config.yaml"), run)["loss_first_step"])
    assert len(grads) == 2
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_reference_logps_from_another_dtype_are_recomputed_not_reused(tmp_path, tiny):
    from reclaif.atomic import atomic_write_jsonl
    from reclaif.train.reference import stale_reason

    run = make_run_dir(tmp_path / "run", tiny, [*SFT, "sft.enabled=false", "dpo.epochs=1"])
    cfg = load_config(run / "config.yaml")
    ref_file = run / "iter-001" / "ref_logps.jsonl"
    # what a bf16 run left behind: values DPO's first step would not start at log 2 from
    atomic_write_jsonl(ref_file, [{"example_id": p["example_id"], "chosen": -1.0,
                                   "rejected": -50.0, "dtype": "bfloat16", "model": str(tiny)}
                                  for p in read_jsonl(run / "iter-001" / "pairs.jsonl")])
    assert "computed in bfloat16" in stale_reason(ref_file, "float32", str(tiny))
    metrics = run_dpo(cfg, run, 1)
    rows = read_jsonl(ref_file)
    assert {(r["dtype"], r["model"], r["source"]) for r in rows} == {
        ("float32", str(tiny), "forward")}
    assert metrics["loss_first_step"] == pytest.approx(math.log(2), abs=1e-4)
    assert metrics["reference_dtype"] == "float32"
    assert stale_reason(ref_file, "float32", str(tiny)) is None
    old = tmp_path / "old.jsonl"  # a file from before the fields: not trusted either
    atomic_write_jsonl(old, [{"example_id": "x", "chosen": -1.0, "rejected": -2.0}])
    assert "older version" in stale_reason(old, "float32", str(tiny))
