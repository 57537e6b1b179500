"""SFT recipe (paper Eq. 1): distil the teacher's responses into the recommender, with the loss on
response tokens only, through the same chunked log-prob kernel DPO uses.

Reads RUN/sft/teacher.jsonl ({id, prompt, response}); writes RUN/sft/checkpoint/ (HF safetensors
+ tokenizer), RUN/sft/train_metrics.json, curves under RUN/tb/sft, and train_state/step-N for a
rerun to resume from. Runs in-process or in every process a launcher starts.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from reclaif.atomic import read_json, read_jsonl
from reclaif.config import RunConfig
from reclaif.errors import DataError
from reclaif.faults import maybe_fail
from reclaif.llm.models import load_tokenizer, resolve_model
from reclaif.train.checkpoint import (drop_train_state, latest_train_state, load_train_state,
                                      save_hf_checkpoint, save_train_state)
from reclaif.train.data import BatchPlan, count_tokens, encode_sft, pad_batch
from reclaif.train.logprobs import model_sequence_logps
from reclaif.train.losses import sft_loss
from reclaif.train.session import (Preemption, TrainLog, hf_model, load_policy, mean_over,
                                   write_metrics)
from reclaif.train.strategy import Strategy

log = logging.getLogger(__name__)


def sft_step(model, batch: dict, chunk: int, kernel: str = "auto",
             weight_grad_acc: str = "fp32"):
    """Mean NLL of the response tokens of `batch` (prompt and padding carry no loss)."""
    logps, counts = model_sequence_logps(hf_model(model), batch["input_ids"],
                                         batch["attention_mask"], batch["loss_mask"], chunk,
                                         kernel=kernel, weight_grad_acc=weight_grad_acc)
    return sft_loss(logps, counts)


def sft_nll(model, batch: dict, chunk: int, kernel: str = "auto",
            weight_grad_acc: str = "fp32"):
    """The summed NLL of the response tokens of `batch` (the recipe divides by the tokens of
    the whole accumulation window, over all ranks)."""
    logps, _ = model_sequence_logps(hf_model(model), batch["input_ids"], batch["attention_mask"],
                                    batch["loss_mask"], chunk, kernel=kernel,
                                    weight_grad_acc=weight_grad_acc)
    return -logps.sum()


def response_tokens(example: dict) -> int:
    """The tokens an example's loss counts (each predicted from the one before it)."""
    return sum(example["loss_mask"][1:])


def run_sft(cfg: RunConfig, run_dir: str | Path) -> dict:
    t = cfg.sft
    phase = Path(run_dir) / "sft"
    metrics_path = phase / "train_metrics.json"
    if (phase / "checkpoint" / "config.json").exists() and metrics_path.exists():
        done = read_json(metrics_path)
        if not done.get("preempted"):
            log.info("SFT already finished: %s", phase / "checkpoint")
            return done

    # 1. engine, tokenizer and data
    strategy = Strategy(t).setup()
    init = resolve_model(cfg.recommender.model, cfg.recommender.cache_dir or None)
    tokenizer = load_tokenizer(init)
    rows = read_jsonl(phase / "teacher.jsonl")[: t.max_examples or None]
    if not rows:
        raise DataError(f"{phase / 'teacher.jsonl'}: no teacher responses to train on")
    examples = encode_sft(tokenizer, rows, t.max_length)
    plan = BatchPlan(len(examples), t.batch_size, strategy.world_size, strategy.rank,
                     t.grad_accum, t.seed)
    total_steps = plan.steps_per_epoch * t.epochs

    # 2. model, optimizer, schedule; resume from the last training state if a run was cut
    strategy.prepare(load_policy(init, t, strategy, cfg.recommender.attn_implementation),
                     total_steps)
    step, epoch0, skip, history, tokens = 0, 0, 0, [], 0
    last = latest_train_state(phase / "train_state")
    if last is not None:
        meta = load_train_state(strategy, last)
        step, epoch0, skip = meta["step"], meta["epoch"], meta["micro"]
        history, tokens = meta["history"], meta["tokens"]
    tlog = TrainLog(Path(run_dir), "sft", strategy.is_main, cfg.report.trackers, cfg.name)
    tlog.resume(history, tokens)

    def state(epoch: int, micro: int) -> dict:
        return {"epoch": epoch, "micro": micro, "history": tlog.history, "tokens": tlog.tokens}

    # 3. the loop: micro-batches, accumulation, optimizer steps
    preempted = False
    strategy.train()
    with Preemption() as preemption:
        for epoch in range(epoch0, t.epochs):
            batches = plan.micro_batches(epoch, skip if epoch == epoch0 else 0)
            first = plan.micro_per_epoch - len(batches)
            acc_loss, acc_tok = 0.0, 0
            for m, idx in enumerate(batches, start=first):
                if (m - first) % t.grad_accum == 0:
                    # The loss is the token mean over the whole optimizer step (Eq. 1): every
                    # micro-batch's NLL sum over the response tokens of all its micro-batches
                    # on all ranks, not a mean of per-micro-batch means.
                    window = batches[m - first:m - first + t.grad_accum]
                    mine = sum(response_tokens(examples[i]) for w in window for i in w)
                    step_tokens = max(1.0, strategy.all_reduce_mean({"n": mine})["n"]
                                      * strategy.world_size)
                batch = strategy.to_device(pad_batch([examples[i] for i in idx],
                                                     tokenizer.pad_token_id))
                with strategy.autocast():
                    nll = strategy.forward(sft_nll, batch, t.logprob_chunk, t.logprob_kernel,
                                           t.logprob_weight_grad)
                boundary = (m + 1) % t.grad_accum == 0
                # Both engines average gradients over ranks and divide by grad_accum: undone here.
                strategy.backward(nll * (t.grad_accum * strategy.world_size / step_tokens),
                                  boundary)
                acc_loss += float(nll.detach()) * strategy.world_size / step_tokens
                acc_tok += count_tokens(batch)
                if not boundary:
                    strategy.micro_step()
                    continue
                grad_norm = strategy.step()
                step += 1
                scalars = strategy.all_reduce_mean({"loss": acc_loss, "tokens": acc_tok})
                tlog.tokens += int(scalars.pop("tokens") * strategy.world_size)
                tlog.step(step, {**scalars, "grad_norm": grad_norm, "lr": strategy.step_lr(),
                                 "epoch": epoch, "tokens_per_s": tlog.tokens_per_s()})
                acc_loss, acc_tok = 0.0, 0
                done_micro = m + 1
                stop = strategy.any_flag(preemption.requested)
                if stop or (t.save_every_steps and step % t.save_every_steps == 0
                            and step < total_steps):
                    nxt = (epoch, done_micro) if done_micro < plan.micro_per_epoch else (epoch + 1, 0)
                    save_train_state(strategy, phase / "train_state", step, state(*nxt))
                if stop:
                    preempted = True
                    break
                maybe_fail(f"sft:step:{step}")  # crash tests: SIGKILL here, once
            if preempted:
                break

    # 4. the model checkpoint and the metrics
    losses = [h["loss"] for h in tlog.history]
    metrics = {"phase": "sft", "steps": step, "total_steps": total_steps,
               "loss": mean_over(tlog.history, "loss", plan.steps_per_epoch),
               "loss_first_step": losses[0] if losses else None,
               "epoch_losses": [mean_over([h for h in tlog.history if h["epoch"] == e], "loss")
                                for e in range(t.epochs)],
               "tokens_per_s": tlog.tokens_per_s(), "examples": len(examples),
               "world_size": strategy.world_size, "engine": t.engine, "lora_r": t.lora_r,
               "preempted": preempted}
    if not preempted:
        save_hf_checkpoint(strategy.module, tokenizer, phase / "checkpoint", strategy.is_main,
                           strategy.barrier)
    write_metrics(metrics_path, metrics, strategy.is_main)
    if not preempted and strategy.is_main:
        drop_train_state(phase / "train_state")
    tlog.close()
    strategy.close()
    return metrics
