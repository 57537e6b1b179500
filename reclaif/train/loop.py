"""The training loop both recipes run (SFT and DPO), once: resume at the saved step, micro-batches
with gradient accumulation, optimizer steps and their logged scalars, a training state every
`save_every_steps` and on preemption (SIGUSR1), the crash tests' fault point after each step,
then the checkpoint, train_metrics.json and the dropped train states.

What differs between the methods comes in as a `Method` (the loss of a micro-batch, and what it
adds to the step's logged scalars), the way torchtune's recipes share their components: so a
fix to resuming or saving reaches both recipes, which had drifted apart when each kept a copy.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from reclaif.atomic import read_json
from reclaif.config import TrainConfig
from reclaif.faults import maybe_fail
from reclaif.run_layout import RunLayout
from reclaif.train.checkpoint import (drop_train_state, latest_train_state, load_train_state,
                                      save_hf_checkpoint, save_train_state)
from reclaif.train.data import BatchPlan
from reclaif.train.session import Preemption, TrainLog, write_metrics

log = logging.getLogger(__name__)


class Method(Protocol):
    """The method-specific part of an optimizer step."""

    def begin_step(self, window: Sequence[Sequence[int]]) -> None:
        """Called before the first micro-batch of each optimizer step with the example indices
        of all its micro-batches on this rank (SFT counts the step's tokens here). Every rank
        calls it at the same point, so it may run collectives."""

    def loss(self, idx: Sequence[int]) -> torch.Tensor:
        """The forward of one micro-batch: the loss to backpropagate, already scaled for the
        accumulation (the engines divide by grad_accum and average over ranks)."""

    def scalars(self) -> dict[str, float]:
        """The last micro-batch's share of the step's logged scalars (the loop sums them over
        the step, then averages over ranks); "tokens" counts the tokens it ran. Read after its
        backward, so the host waits for the device once per micro-batch, with all of it
        queued."""


@dataclass(frozen=True)
class StageFiles:
    """What a training phase writes in its stage directory."""

    checkpoint: Path
    train_state: Path
    metrics: Path

    @classmethod
    def of(cls, run_dir: str | Path, stage: str) -> "StageFiles":
        layout = RunLayout(run_dir)
        return cls(layout.checkpoint(stage), layout.train_state(stage),
                   layout.train_metrics(stage))


@dataclass(frozen=True)
class LoopResult:
    steps: int
    preempted: bool


def total_steps(plan: BatchPlan, cfg: TrainConfig) -> int:
    return plan.steps_per_epoch * cfg.epochs


def finished(files: StageFiles) -> dict | None:
    """The metrics of a phase that already finished (checkpoint and metrics written, not cut
    by a preemption), else None."""
    if (files.checkpoint / "config.json").exists() and files.metrics.exists():
        done = read_json(files.metrics)
        if not done.get("preempted"):
            return done
    return None


def resume(strategy: Any, files: StageFiles, tlog: TrainLog) -> tuple[int, int, int]:
    """(step, epoch, micro-batch) to continue from: the last training state of a run that was
    cut, restored into the prepared strategy and the log, or the start."""
    step, epoch, micro, history, tokens = 0, 0, 0, [], 0
    last = latest_train_state(files.train_state)
    if last is not None:
        meta = load_train_state(strategy, last)
        step, epoch, micro = meta["step"], meta["epoch"], meta["micro"]
        history, tokens = meta["history"], meta["tokens"]
    tlog.resume(history, tokens)
    return step, epoch, micro


def train_loop(strategy: Any, plan: BatchPlan, method: Method, cfg: TrainConfig,
               files: StageFiles, tlog: TrainLog, phase: str) -> LoopResult:
    """Runs the phase's optimizer steps from where a cut run stopped. `phase` ("sft", "dpo")
    names the fault points `PHASE:step:N` the crash tests kill the process at."""
    step, epoch0, skip = resume(strategy, files, tlog)
    total = total_steps(plan, cfg)
    preempted = False
    strategy.train()
    with Preemption() as preemption:
        for epoch in range(epoch0, cfg.epochs):
            batches = plan.micro_batches(epoch, skip if epoch == epoch0 else 0)
            first = plan.micro_per_epoch - len(batches)
            acc: dict[str, float] = {}
            for m, idx in enumerate(batches, start=first):
                if (m - first) % cfg.grad_accum == 0:
                    method.begin_step(batches[m - first:m - first + cfg.grad_accum])
                loss = method.loss(idx)
                boundary = (m + 1) % cfg.grad_accum == 0
                strategy.backward(loss, boundary)
                for k, v in method.scalars().items():
                    acc[k] = acc.get(k, 0.0) + v
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
                if stop or (cfg.save_every_steps and step % cfg.save_every_steps == 0
                            and step < total):
                    nxt = (epoch, m + 1) if m + 1 < plan.micro_per_epoch else (epoch + 1, 0)
                    save_train_state(strategy, files.train_state, step,
                                     {"epoch": nxt[0], "micro": nxt[1], "history": tlog.history,
                                      "tokens": tlog.tokens})
                if stop:
                    preempted = True
                    break
                maybe_fail(f"{phase}:step:{step}")  # crash tests: SIGKILL here, once
            if preempted:
                break
    return LoopResult(step, preempted)


def finish(strategy: Any, tlog: TrainLog, files: StageFiles, tokenizer: Any, metrics: dict,
           preempted: bool) -> dict:
    """The model checkpoint (unless preempted: the rerun resumes from the train state), the
    metrics, and the resume points dropped once the checkpoint is safe; then the engine is
    torn down."""
    if not preempted:
        save_hf_checkpoint(strategy.module, tokenizer, files.checkpoint, strategy.is_main,
                           strategy.barrier)
    write_metrics(files.metrics, metrics, strategy.is_main)
    if not preempted and strategy.is_main:
        drop_train_state(files.train_state)
    tlog.close()
    strategy.close()
    return metrics
