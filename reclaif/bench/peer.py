"""`reclaif bench peer`: the project's DPO step against TRL's `DPOTrainer` on the same model and
the same real LastFM pairs, reporting tokens/s, s/step and peak memory of each and their ratios.

Pairs: bundled-sample recommender prompts (as the samplers render them), the offline teacher's
answer as chosen and the same answer with its ranking reversed as rejected (lastfm_pairs).
Both sides train in fp32 with the same pairs per step, learning rate, max length and threads,
reference log-probs computed once before training (TRL: `precompute_ref_log_probs=True`, its
fastest honest setting here; no second model in memory), no gradient checkpointing (the
project's default; TRL's DPOConfig turns it on and bf16 autocast too unless told not to;
--gradient-checkpointing turns it on for the project's side only).
- reclaif: the DPO recipe's own pieces (reclaif/train/dpo.py): encode_pairs, Strategy (AdamW,
  clipping, schedule), compute_reference_logps, collate_pairs and fused_dpo_loss per step, with
  the recipe's default `dpo.prompt_forward: auto` (each pair's prompt run once, sdpa here).
  Tokens per step count both sequences of each pair on both sides (the same work); the shared
  forward runs fewer (`tokens_run_per_step`).
- trl: `DPOTrainer.train()` on the same texts (the chat-rendered prompt, TRL appends the EOS the
  project appends); a step is timed from its callbacks' on_step_begin to on_step_end.

Each side runs in its own child process (`python -m reclaif.bench.peer SIDE SPEC`), so peak
memory is that side's alone: the process's peak RSS on CPU (getrusage, weights, optimizer state,
imports and the reference pass included), `torch.cuda.max_memory_allocated` on a GPU. Order
A-B-A: reclaif, trl, reclaif, so a drift in a shared machine's speed falls on both sides alike;
the reclaif numbers join both of its runs. The first step of each child (with steps > 1) is a
warm-up and not timed. --quick: a tiny random Llama (49k vocab), shorter pairs, one step each.
"""
from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reclaif.config import DPOConfig, shares_prompt
from reclaif.data import load_examples, load_items
from reclaif.errors import ConfigError
from reclaif.llm.models import build_tiny_model, load_tokenizer, resolve_model
from reclaif.pipeline.export import standard_rows
from reclaif.prompts import render_recommender
from reclaif.records import PreferencePair
from reclaif.teacher import OfflineTeacher

SIDES = ("reclaif", "trl")


def reordered(answer: str, order: Sequence[int]) -> str:
    """The answer with its numbered items in `order` (indices into its list), renumbered: the
    same words and length, another ranking. The benches' and tests' rejected answers."""
    lines = answer.split("\n")
    at = [i for i, line in enumerate(lines) if re.match(r"\d+\. ", line)]
    items = [re.sub(r"^\d+\. ", "", lines[i]) for i in at]
    for k, (i, j) in enumerate(zip(at, order), 1):
        lines[i] = f"{k}. {items[j]}"
    return "\n".join(lines)


def _reversed_ranking(answer: str) -> str:
    """The ranking the teacher would rate worst: its items in reverse order."""
    n = sum(1 for line in answer.split("\n") if re.match(r"\d+\. ", line))
    return reordered(answer, range(n - 1, -1, -1))


def lastfm_pairs(count: int, top_k: int = 5) -> list:
    """`count` PreferencePairs from the bundled LastFM sample: recommender prompt, the offline
    teacher's answer (chosen) and its reversed ranking (rejected)."""
    if top_k < 2:
        raise ValueError(f"lastfm_pairs: top_k {top_k} ranks one item, and its reverse is the "
                         "same answer; use 2 or more")

    examples, items = load_examples("sample"), load_items("sample")
    teacher = OfflineTeacher(items, top_k)
    pairs = []
    for e in examples[:count]:
        good = teacher.respond(e)
        pairs.append(PreferencePair(e.id, render_recommender(e, items, top_k), good,
                                    _reversed_ranking(good)))
    return pairs


def _peak_bytes(device: str) -> int:
    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _model_path(spec: dict, tmp: str) -> str:
    return str(build_tiny_model(Path(tmp) / "tiny") if spec["quick"] else resolve_model("default"))


def _reclaif_side(spec: dict, tmp: str) -> dict:
    import torch

    # the project's trainer: imported in the reclaif child only, so the trl child's peak memory
    # (imports included) holds none of it
    from reclaif.train.data import (PADDING, collate_pairs, count_tokens, encode_pairs,
                                    share_prompt)
    from reclaif.train.dpo import attention_of
    from reclaif.train.fused_dpo import fused_dpo_loss
    from reclaif.train.reference import compute_reference_logps
    from reclaif.train.session import hf_model, load_policy
    from reclaif.train.strategy import Strategy

    path = _model_path(spec, tmp)
    t = DPOConfig(batch_size=spec["pairs"], lr=spec["lr"], max_length=spec["max_length"],
                  beta=spec["beta"], gradient_checkpointing=spec["gradient_checkpointing"])
    strategy = Strategy(t).setup()
    tokenizer = load_tokenizer(path)
    encoded = encode_pairs(tokenizer, lastfm_pairs(spec["pairs"], spec["top_k"]), t.max_length)
    total = spec["warmup"] + spec["steps"]
    policy = load_policy(path, t)
    shared = shares_prompt(t.prompt_forward, attention_of(policy))  # as run_dpo decides
    strategy.prepare(policy, total)
    del policy
    strategy.train(False)
    rows = compute_reference_logps(
        lambda fn, *a: strategy.forward(lambda m, *b: fn(hf_model(m), *b), *a), encoded,
        tokenizer.pad_token_id, t.batch_size, t.logprob_chunk, device=strategy.device,
        kernel=t.logprob_kernel, shared_prompt=shared)
    for row, pair in zip(rows, encoded):  # as attach_reference_logps does from the file
        pair["ref_chosen"], pair["ref_rejected"] = row["chosen"], row["rejected"]
    strategy.train()
    sync = torch.cuda.synchronize if strategy.on_gpu else (lambda: None)
    rss_before, times, tokens, losses = _rss_bytes(), [], 0, []
    for step in range(total):
        sync()
        t0 = time.perf_counter()
        batch = collate_pairs(encoded, tokenizer.pad_token_id)
        loss, _ = strategy.forward(
            lambda m, b: fused_dpo_loss(hf_model(m), b["chosen"], b["rejected"], b["ref_chosen"],
                                        b["ref_rejected"], t.beta, t.loss_type,
                                        t.label_smoothing, t.logprob_chunk,
                                        kernel=t.logprob_kernel, device=strategy.device,
                                        shared_prompt=shared), batch)
        strategy.backward(loss, True)
        strategy.step()
        sync()
        if step >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
        tokens = count_tokens(batch["chosen"]) + count_tokens(batch["rejected"])
        losses.append(float(loss.detach()))
    strategy.close()
    run = (int((share_prompt(batch["chosen"], batch["rejected"])["segment"] != PADDING).sum())
           if shared else tokens)
    return {"times": times, "tokens_per_step": tokens, "tokens_run_per_step": run,
            "prompt_forward": "shared" if shared else "separate", "losses": losses,
            "rss_before_steps": rss_before}


def _trl_side(spec: dict, tmp: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    path = _model_path(spec, tmp)
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation="sdpa")
    rows = standard_rows(tokenizer, lastfm_pairs(spec["pairs"], spec["top_k"]))
    total = spec["warmup"] + spec["steps"]
    args = DPOConfig(output_dir=str(Path(tmp) / "trl"), per_device_train_batch_size=spec["pairs"],
                     learning_rate=spec["lr"], max_length=spec["max_length"], beta=spec["beta"],
                     max_steps=total, precompute_ref_log_probs=True,
                     gradient_checkpointing=False, bf16=False, fp16=False,
                     use_cpu=spec["device"] == "cpu", report_to="none", save_strategy="no",
                     logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    sync = torch.cuda.synchronize if spec["device"] == "cuda" else (lambda: None)
    marks: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            sync()
            marks.append((time.perf_counter(), 0.0))

        def on_step_end(self, *a: Any, **k: Any) -> None:
            sync()
            marks[-1] = (marks[-1][0], time.perf_counter())

    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, callbacks=[Clock()])
    rss_before = _rss_bytes()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(spec["pairs"])])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"times": [end - begin for begin, end in marks[spec["warmup"]:]],
            "tokens_per_step": int(batch["attention_mask"].sum()), "losses": losses,
            "rss_before_steps": rss_before}


def _child_main(side: str, spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory(prefix=f"reclaif-bench-peer-{side}-") as tmp:
        out = (_reclaif_side if side == "reclaif" else _trl_side)(spec, tmp)
    out["peak_bytes"] = _peak_bytes(spec["device"])
    print("PEER-RESULT " + json.dumps(out), flush=True)


def _run_child(side: str, spec: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "reclaif.bench.peer", side, json.dumps(spec)],
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEER-RESULT ")]
    if proc.returncode or not lines:

        raise ConfigError(f"bench peer: the {side} child failed (exit {proc.returncode}):\n"
                          f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("PEER-RESULT "))


def measure(spec: dict) -> dict:
    load_before = os.getloadavg()[0]
    runs = [(side, _run_child(side, spec)) for side in ("reclaif", "trl", "reclaif")]
    out: dict[str, dict] = {}
    for side in SIDES:
        mine = [r for s, r in runs if s == side]
        times = [t for r in mine for t in r["times"]]
        tokens = mine[0]["tokens_per_step"]
        out[side] = {"tokens_per_step": tokens,
                     "tokens_run_per_step": mine[0].get("tokens_run_per_step", tokens),
                     "prompt_forward": mine[0].get("prompt_forward", "separate"),
                     "steps_timed": len(times),
                     "step_s": statistics.median(times),
                     "tokens_per_s": tokens * len(times) / sum(times),
                     "peak_gib": max(r["peak_bytes"] for r in mine) / 2**30,
                     "rss_before_steps_gib": max(r["rss_before_steps"] for r in mine) / 2**30,
                     "losses": [r["losses"] for r in mine]}
    return {"bench": "peer", "model": ("tiny random Llama (49k vocab)" if spec["quick"]
                                       else "SmolLM2-135M-Instruct (embedded default)"),
            **spec, "order": [s for s, _ in runs],
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "memory": "max_memory_allocated" if spec["device"] == "cuda" else "peak RSS",
            "sides": out,
            "tokens_per_s_ratio": out["reclaif"]["tokens_per_s"] / out["trl"]["tokens_per_s"],
            "peak_memory_ratio": out["reclaif"]["peak_gib"] / out["trl"]["peak_gib"]}


def run(*, quick: bool = False, device: str = "cpu", dtype: str = "float32",
        steps: int | None = None, gradient_checkpointing: bool = False,
        as_json: bool = False) -> int:
    """Prints reclaif's DPO step against TRL's on the same pairs and model."""
    import trl  # noqa: F401  (a clear ImportError here, not in a child)

    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("bench device 'cuda': torch sees no CUDA device")
    if dtype != "float32":
        raise ConfigError("bench peer: fp32 only (both sides train fp32 master weights)")
    steps = steps or (1 if quick else 3)
    spec = {"quick": quick, "device": device, "pairs": 2, "top_k": 2 if quick else 5,
            "lr": 5e-6, "beta": 0.1, "max_length": 1024, "threads": min(2, os.cpu_count() or 1),
            "steps": steps, "warmup": 1 if steps > 1 else 0,
            # the project's side only: TRL's stays off, its fastest setting
            "gradient_checkpointing": gradient_checkpointing}
    result = measure(spec)
    if as_json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"DPO step, {result['model']}, {spec['pairs']} pairs per step, {device} "
          f"({spec['threads']} threads, fp32), order {'-'.join(result['order'])}, "
          f"reclaif gradient checkpointing {'on' if spec['gradient_checkpointing'] else 'off'}, "
          f"load average {result['load_average']}:")
    for side in SIDES:
        s = result["sides"][side]
        print(f"  {side:<8} {s['tokens_per_s']:8.1f} tokens/s  {s['step_s']:7.2f} s/step  "
              f"peak {s['peak_gib']:.2f} GiB ({result['memory']})  "
              f"{s['tokens_per_step']} tokens/step ({s['tokens_run_per_step']} run, "
              f"{s['prompt_forward']} prompt), {s['steps_timed']} steps timed")
    print(f"  reclaif / trl: x{result['tokens_per_s_ratio']:.2f} tokens/s, "
          f"x{result['peak_memory_ratio']:.2f} peak memory")
    if spec["warmup"] == 0:
        print("  (one cold step per child: a smoke run, not a measurement)")
    return 0


if __name__ == "__main__":
    _child_main(sys.argv[1], json.loads(sys.argv[2]))
