"""DPO recipe (paper Eq. 2; IPO, hinge and cDPO by config) for one iteration of RecLAIF.

Reads RUN/iter-NNN/pairs.jsonl (PreferencePair rows) and ref_logps.jsonl, computing the latter
first when it is absent (the reference is the SFT model or the previous iteration's, by
`dpo.reference`); the policy starts from the previous checkpoint. The DPO loss is fused into the
log-prob kernel. Writes iter-NNN/checkpoint/, iter-NNN/train_metrics.json (loss, reward accuracy
and margins, tokens/s, steps), curves under RUN/tb/iter-NNN, and train_state/step-N.
"""
from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

import torch

from reclaif.atomic import read_json, read_jsonl
from reclaif.config import RunConfig, shares_prompt
from reclaif.errors import DataError
from reclaif.faults import maybe_fail
from reclaif.llm.models import load_tokenizer, resolve_model
from reclaif.records import PreferencePair
from reclaif.train.checkpoint import (drop_train_state, latest_train_state, load_train_state,
                                      save_hf_checkpoint, save_train_state)
from reclaif.train.data import BatchPlan, collate_pairs, count_tokens, encode_pairs
from reclaif.train.fused_dpo import fused_dpo_loss
from reclaif.train.reference import (attach_reference_logps, compute_reference_logps,
                                     write_reference_logps)
from reclaif.train.session import (Preemption, TrainLog, hf_model, load_policy, mean_over,
                                   write_metrics)
from reclaif.train.strategy import Strategy

log = logging.getLogger(__name__)
METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")


def policy_and_reference(cfg: RunConfig, run_dir: Path, iteration: int) -> tuple[str, str]:
    """Where the policy starts and which model is the reference for this iteration."""
    first = (str(run_dir / "sft" / "checkpoint") if cfg.sft.enabled else
             resolve_model(cfg.recommender.model, cfg.recommender.cache_dir or None))
    previous = str(run_dir / f"iter-{iteration - 1:03d}" / "checkpoint")
    policy = first if iteration == 1 else previous
    reference = first if cfg.dpo.reference == "sft" or iteration == 1 else previous
    return policy, reference


def attention_of(model: torch.nn.Module) -> str:
    """The attention implementation a loaded model runs (its config's "auto" resolved)."""
    return hf_model(model).config._attn_implementation


def run_dpo(cfg: RunConfig, run_dir: str | Path, iteration: int) -> dict:
    t = cfg.dpo
    run_dir = Path(run_dir)
    if iteration < 1:
        raise DataError(f"dpo: iteration must be >= 1, got {iteration}")
    it_dir = run_dir / f"iter-{iteration:03d}"
    metrics_path = it_dir / "train_metrics.json"
    if (it_dir / "checkpoint" / "config.json").exists() and metrics_path.exists():
        done = read_json(metrics_path)
        if not done.get("preempted"):
            log.info("DPO iteration %d already finished: %s", iteration, it_dir / "checkpoint")
            return done

    # 1. engine, tokenizer and pairs
    strategy = Strategy(t).setup()
    policy_path, ref_path = policy_and_reference(cfg, run_dir, iteration)
    tokenizer = load_tokenizer(policy_path)
    pairs = [PreferencePair.from_json(r) for r in read_jsonl(it_dir / "pairs.jsonl")]
    if not pairs:
        raise DataError(f"{it_dir / 'pairs.jsonl'}: no preference pairs to train on")
    encoded = encode_pairs(tokenizer, pairs, t.max_length)
    plan = BatchPlan(len(encoded), t.batch_size, strategy.world_size, strategy.rank,
                     t.grad_accum, t.seed)
    total_steps = plan.steps_per_epoch * t.epochs
    attn = cfg.recommender.attn_implementation
    policy = load_policy(policy_path, t, strategy, attn)
    shared = shares_prompt(t.prompt_forward, attention_of(policy))
    strategy.prepare(policy, total_steps)
    del policy

    # 2. reference log-probs, once per iteration (before any policy update or resume)
    ref_file = it_dir / "ref_logps.jsonl"
    if not ref_file.exists():
        if ref_path == policy_path:
            strategy.train(False)
            forward = strategy.forward
        else:
            forward = strategy.eval_forward(load_policy(ref_path, t.__class__(
                **{**t.__dict__, "lora_r": 0, "gradient_checkpointing": False}), strategy, attn))
        # Under the policy forward's own autocast: in bf16 the first step then has loss log 2
        # and zero margins, as in fp32 (an fp32 reference would be off by the bf16 rounding).
        with strategy.autocast():
            rows = compute_reference_logps(
                lambda fn, *a: forward(lambda m, *b: fn(hf_model(m), *b), *a), encoded,
                tokenizer.pad_token_id, t.batch_size, t.logprob_chunk, strategy.rank,
                strategy.world_size, strategy.device, kernel=t.logprob_kernel,
                shared_prompt=shared)
        if strategy.is_main:
            write_reference_logps(ref_file, rows)
            maybe_fail("dpo:reference")  # crash tests: SIGKILL after the reference is stored
        del forward
        gc.collect()
        strategy.barrier()
    attach_reference_logps(ref_file, encoded)

    # 3. resume from the last training state if a run was cut
    step, epoch0, skip, history, tokens = 0, 0, 0, [], 0
    last = latest_train_state(it_dir / "train_state")
    if last is not None:
        meta = load_train_state(strategy, last)
        step, epoch0, skip = meta["step"], meta["epoch"], meta["micro"]
        history, tokens = meta["history"], meta["tokens"]
    tlog = TrainLog(run_dir, it_dir.name, strategy.is_main, cfg.report.trackers, cfg.name)
    tlog.resume(history, tokens)

    def dpo_step(model, batch):
        return fused_dpo_loss(hf_model(model), batch["chosen"], batch["rejected"],
                              batch["ref_chosen"], batch["ref_rejected"], t.beta, t.loss_type,
                              t.label_smoothing, t.logprob_chunk, kernel=t.logprob_kernel,
                              weight_grad_acc=t.logprob_weight_grad, device=strategy.device,
                              shared_prompt=shared)

    # 4. the loop: micro-batches of pairs, accumulation, optimizer steps
    preempted = False
    strategy.train()
    with Preemption() as preemption:
        for epoch in range(epoch0, t.epochs):
            batches = plan.micro_batches(epoch, skip if epoch == epoch0 else 0)
            first = plan.micro_per_epoch - len(batches)
            acc: dict[str, float] = {}
            for m, idx in enumerate(batches, start=first):
                # Left on the host: fused_dpo_loss copies it over without a device sync.
                batch = collate_pairs([encoded[i] for i in idx], tokenizer.pad_token_id)
                with strategy.autocast():
                    loss, metrics = strategy.forward(dpo_step, batch)
                boundary = (m + 1) % t.grad_accum == 0
                strategy.backward(loss, boundary)
                values = torch.stack([metrics[k] for k in METRICS]).tolist()  # one sync
                for k, v in zip(METRICS, values):
                    acc[k] = acc.get(k, 0.0) + v / t.grad_accum
                acc["tokens"] = acc.get("tokens", 0.0) + count_tokens(batch["chosen"]) + \
                    count_tokens(batch["rejected"])
                if not boundary:
                    strategy.micro_step()
                    continue
                grad_norm = strategy.step()
                step += 1
                scalars = strategy.all_reduce_mean(acc)
                tlog.tokens += int(scalars.pop("tokens") * strategy.world_size)
                tlog.step(step, {**scalars, "grad_norm": grad_norm, "lr": strategy.step_lr(),
                                 "epoch": epoch, "tokens_per_s": tlog.tokens_per_s()})
                acc = {}
                stop = strategy.any_flag(preemption.requested)
                if stop or (t.save_every_steps and step % t.save_every_steps == 0
                            and step < total_steps):
                    nxt = (epoch, m + 1) if m + 1 < plan.micro_per_epoch else (epoch + 1, 0)
                    save_train_state(strategy, it_dir / "train_state", step,
                                     {"epoch": nxt[0], "micro": nxt[1], "history": tlog.history,
                                      "tokens": tlog.tokens})
                if stop:
                    preempted = True
                    break
                maybe_fail(f"dpo:step:{step}")  # crash tests: SIGKILL here, once
            if preempted:
                break

    # 5. the model checkpoint and the metrics
    last_epoch = [h for h in tlog.history if h["epoch"] == (tlog.history[-1]["epoch"]
                                                            if tlog.history else 0)]
    metrics_out = {"phase": "dpo", "iteration": iteration, "steps": step,
                   "total_steps": total_steps, "pairs": len(encoded), "policy_init": policy_path,
                   "reference": ref_path, "loss_type": t.loss_type, "beta": t.beta,
                   **{k: mean_over(last_epoch, k) for k in METRICS},
                   "loss_first_step": tlog.history[0]["loss"] if tlog.history else None,
                   "margins_first_step": (tlog.history[0]["rewards/margins"] if tlog.history
                                          else None),
                   "bf16": t.bf16,
                   "epoch_losses": [mean_over([h for h in tlog.history if h["epoch"] == e], "loss")
                                    for e in range(t.epochs)],
                   "tokens_per_s": tlog.tokens_per_s(), "world_size": strategy.world_size,
                   "engine": t.engine, "lora_r": t.lora_r,
                   "prompt_forward": "shared" if shared else "separate", "preempted": preempted}
    if not preempted:
        save_hf_checkpoint(strategy.module, tokenizer, it_dir / "checkpoint", strategy.is_main,
                           strategy.barrier)
    write_metrics(metrics_path, metrics_out, strategy.is_main)
    if not preempted and strategy.is_main:
        drop_train_state(it_dir / "train_state")
    tlog.close()
    strategy.close()
    return metrics_out
