"""SFT recipe (paper Eq. 1): distil the teacher's responses into the recommender, with the loss on
response tokens only, through the same chunked log-prob kernel DPO uses.

A micro-batch's rows begin with the same prompt head (the recommender's instructions): with
sft.prompt_forward auto/shared that head runs once for the batch (reclaif.train.shared_head),
for the same loss and gradients as whole rows.

The loss of an optimizer step is the token mean over the whole step: the summed NLL of the
response tokens of all its micro-batches on all ranks, divided by their total count. With
grad_accum > 1 or several ranks that is not the mean of per-micro-batch means (a long answer
weighs as many tokens as it has, wherever it falls), so a step's gradient and logged loss are the
same however its examples are split into micro-batches.

Reads RUN/sft/teacher.jsonl ({id, prompt, response}); writes RUN/sft/checkpoint/ (HF safetensors
+ tokenizer), RUN/sft/train_metrics.json, curves under RUN/tb/sft, and train_state/step-N for a
rerun to resume from. Runs in-process or in every process a launcher starts.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reclaif.atomic import read_jsonl
from reclaif.config import RunConfig, SFTConfig
from reclaif.errors import ConfigError, DataError
from reclaif.llm.models import load_tokenizer, resolve_model
from reclaif.run_layout import SFT, RunLayout
from reclaif.train.data import BatchPlan, count_tokens, encode_sft, pad_batch, split_head
from reclaif.train.logprobs import model_sequence_logps
from reclaif.train.losses import sft_loss
from reclaif.train.loop import StageFiles, finish, finished, total_steps, train_loop
from reclaif.train.session import TrainLog, epoch_means, hf_model, load_policy, mean_over
from reclaif.train.shared_head import common_head, head_sequence_logps, head_support
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
    the whole accumulation window, over all ranks). A batch with head_ids (data.split_head)
    runs its shared head once."""
    if "head_ids" in batch:
        logps, _ = head_sequence_logps(hf_model(model), batch["head_ids"], batch["input_ids"],
                                       batch["attention_mask"], batch["loss_mask"], chunk,
                                       kernel=kernel, weight_grad_acc=weight_grad_acc)
        return -logps.sum()
    logps, _ = model_sequence_logps(hf_model(model), batch["input_ids"], batch["attention_mask"],
                                    batch["loss_mask"], chunk, kernel=kernel,
                                    weight_grad_acc=weight_grad_acc)
    return -logps.sum()


def shares_head(cfg: SFTConfig, policy: torch.nn.Module) -> bool:
    """Whether SFT runs each micro-batch's common prompt head once (sft.prompt_forward), asked
    of the loaded model: 'shared' where it cannot is an error, 'auto' falls back to whole rows
    and logs why."""
    if cfg.prompt_forward == "separate":
        return False
    why = head_support(hf_model(policy))
    if why is None:
        return True
    if cfg.prompt_forward == "shared":
        raise ConfigError(f"sft.prompt_forward: 'shared' cannot run: {why}; use auto or separate")
    log.info("SFT runs every prompt whole (sft.prompt_forward: auto): %s", why)
    return False


def response_tokens(example: dict) -> int:
    """The tokens an example's loss counts (each predicted from the one before it)."""
    return sum(example["loss_mask"][1:])


@dataclass
class SFTMethod:
    """SFT's part of the shared loop: the token-mean NLL over each optimizer step (module doc)."""

    strategy: Strategy
    cfg: SFTConfig
    examples: list[dict]
    pad_id: int
    shared_head: bool = False  # run each micro-batch's common prompt head once
    step_tokens: float = 1.0  # response tokens of the current step, all micro-batches and ranks
    head_tokens_saved: int = 0  # head tokens not run again, this process's micro-batches
    _nll: Any = None
    _tokens: int = 0

    def begin_step(self, window: Sequence[Sequence[int]]) -> None:
        mine = sum(response_tokens(self.examples[i]) for w in window for i in w)
        self.step_tokens = max(1.0, self.strategy.all_reduce_mean({"n": mine})["n"]
                               * self.strategy.world_size)

    def loss(self, idx: Sequence[int]) -> torch.Tensor:
        t, strategy = self.cfg, self.strategy
        rows = [self.examples[i] for i in idx]
        head = common_head(rows) if self.shared_head else 0
        batch = strategy.to_device(split_head(rows, head, self.pad_id) if head
                                   else pad_batch(rows, self.pad_id))
        with strategy.autocast():
            self._nll = strategy.forward(sft_nll, batch, t.logprob_chunk, t.logprob_kernel,
                                         t.logprob_weight_grad)
        self._tokens = count_tokens(batch) + head * len(rows)  # the rows' tokens, either way
        self.head_tokens_saved += head * (len(rows) - 1)
        # Both engines average gradients over ranks and divide by grad_accum: undone here.
        return self._nll * (t.grad_accum * strategy.world_size / self.step_tokens)

    def scalars(self) -> dict[str, float]:
        return {"loss": float(self._nll.detach()) * self.strategy.world_size / self.step_tokens,
                "tokens": self._tokens}


def run_sft(cfg: RunConfig, run_dir: str | Path) -> dict:
    t = cfg.sft
    files = StageFiles.of(run_dir, SFT)
    done = finished(files)
    if done is not None:
        log.info("SFT already finished: %s", files.checkpoint)
        return done

    # 1. engine, tokenizer and data
    strategy = Strategy(t).setup()
    init = resolve_model(cfg.recommender.model, cfg.recommender.cache_dir or None)
    tokenizer = load_tokenizer(init)
    teacher = RunLayout(run_dir).teacher()
    rows = read_jsonl(teacher)[: t.max_examples or None]
    if not rows:
        raise DataError(f"{teacher}: no teacher responses to train on")
    examples = encode_sft(tokenizer, rows, t.max_length)
    plan = BatchPlan(len(examples), t.batch_size, strategy.world_size, strategy.rank,
                     t.grad_accum, t.seed)
    total = total_steps(plan, t)

    # 2. model, optimizer, schedule; then the shared loop (resumes a run that was cut)
    policy = load_policy(init, t, strategy, cfg.recommender.attn_implementation)
    shared = shares_head(t, policy)
    strategy.prepare(policy, total)
    del policy
    tlog = TrainLog(Path(run_dir), SFT, strategy.is_main, cfg.report.trackers, cfg.name)
    method = SFTMethod(strategy, t, examples, tokenizer.pad_token_id, shared)
    result = train_loop(strategy, plan, method, t, files, tlog, "sft")

    # 3. the model checkpoint and the metrics
    losses = [h["loss"] for h in tlog.history]
    metrics = {"phase": "sft", "steps": result.steps, "total_steps": total,
               "loss": mean_over(tlog.history, "loss", plan.steps_per_epoch),
               "loss_first_step": losses[0] if losses else None,
               "epoch_losses": epoch_means(tlog.history, t.epochs),
               "tokens_per_s": tlog.tokens_per_s(), "examples": len(examples),
               "world_size": strategy.world_size, "engine": t.engine, "lora_r": t.lora_r,
               "prompt_forward": "shared" if shared else "separate",
               "head_tokens_saved": method.head_tokens_saved, "preempted": result.preempted}
    return finish(strategy, tlog, files, tokenizer, metrics, result.preempted)
