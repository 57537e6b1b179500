"""What both recipes need around their loop: the model to train (full or LoRA), preemption by
SIGUSR1, and training curves (rank 0, to the trackers of `report.trackers`: TensorBoard under
RUN/tb/, Weights & Biases) plus train_metrics.json.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from reclaif.atomic import atomic_write_json
from reclaif.config import TRACKERS, TrainConfig
from reclaif.errors import ConfigError
from reclaif.run_layout import RunLayout
from reclaif.llm.models import check_checkpoint_dir, pick_attn

log = logging.getLogger(__name__)


def load_policy(path: str, cfg: TrainConfig, strategy: Any = None,
                attn_implementation: str = "auto") -> nn.Module:
    """The model to train (or a frozen reference), loaded the way its engine holds it:
    - DeepSpeed ZeRO-3: inside `deepspeed.zero.Init` (transformers' HfDeepSpeedConfig), in the
      training dtype (bf16 with bf16 on), so each rank only ever holds its 1/world partition
      and no rank builds a full fp32 copy on the host (a 7B model: 29 GB per rank);
    - torch engine: fp32 master weights (the autocast casts);
    then LoRA adapters on every linear layer when lora_r > 0 and gradient checkpointing
    (non-reentrant, so frozen inputs need no requires_grad trick). Attention: `auto` is
    flash-attention 2 on GPUs where flash_attn is installed, else sdpa."""
    from transformers import AutoModelForCausalLM

    ckpt = str(check_checkpoint_dir(path))
    zero3 = strategy.zero3_config(ckpt) if strategy is not None else None
    dtype = torch.bfloat16 if cfg.bf16 and cfg.engine == "deepspeed" else torch.float32
    device = "cuda" if strategy is not None and strategy.on_gpu else "cpu"
    attn = pick_attn(attn_implementation, device)
    if attn == "flash_attention_2" and device == "cpu":
        attn = "sdpa"  # flash-attention has no CPU kernels; the CPU path (tests) uses sdpa
    hf_ds = None
    if zero3 is not None:
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds = HfDeepSpeedConfig(zero3)  # noqa: F841  (from_pretrained sees it while alive)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype, use_safetensors=True,
                                                 attn_implementation=attn)
    del hf_ds  # later loads (a checkpoint reader, the samplers) are plain again
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    model.train()
    return model


def hf_model(model: nn.Module) -> nn.Module:
    """The transformers model the kernels call (peft injects LoRA into it in place)."""
    # peft_config: on PEFT-wrapped models only, so peft stays unimported without LoRA
    return model.get_base_model() if hasattr(model, "peft_config") else model


class Preemption:
    """SIGUSR1 (Slurm's warning before a job is killed or requeued) sets a flag; the loop saves a
    training state at the next optimizer step and returns. Only the main thread can install
    handlers; elsewhere (a worker thread) the flag simply never rises."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGUSR1, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("SIGUSR1: saving a training state at the next step, then exiting")
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, self._previous)


class TrainLog:
    """Per-step scalars to each tracker of `report.trackers` (rank 0 only), as `train/NAME`, and
    running sums for train_metrics.json:
    - tensorboard: event files under RUN/tb/PHASE/;
    - wandb: one W&B run per phase (name RUN_NAME/PHASE, group RUN_NAME, project $WANDB_PROJECT
      or reclaif), its files under $WANDB_DIR or RUN/wandb/; WANDB_MODE=offline needs no network
      (`wandb sync` uploads later). A phase resumed after a cut is a new W&B run from its step.
    The writers are the libraries' own (torch's SummaryWriter, wandb.init/log/finish), not
    accelerate's TensorBoardTracker/WandBTracker: those wrap the same calls, and their
    main-process check builds an accelerate PartialState, a second view of the process group
    that our engine (strategy.py, not accelerate's) already set up; rank 0 is known here."""

    def __init__(self, run_dir: Path, phase: str, is_main: bool,
                 trackers: Sequence[str] = ("tensorboard",), run_name: str = "run"):
        unknown = sorted(set(trackers) - set(TRACKERS))
        if unknown:
            raise ConfigError(f"report.trackers: {unknown} not among {list(TRACKERS)}")
        if "wandb" in trackers and importlib.util.find_spec("wandb") is None:
            raise ConfigError("report.trackers: wandb is not installed (pip install wandb), "
                              "or leave it out of the list")
        self.is_main = is_main
        self.writer: Any = None
        self.wandb: Any = None
        if is_main and "tensorboard" in trackers:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(RunLayout(run_dir).curves(phase)))
        if is_main and "wandb" in trackers:
            import wandb

            self.wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or "reclaif",
                dir=os.environ.get("WANDB_DIR") or str(run_dir), name=f"{run_name}/{phase}",
                group=run_name, job_type=phase,
                settings=wandb.Settings(console="off"))  # leave the driver's stdout alone
        self.t0 = time.time()
        self.tokens = self._tokens0 = 0
        self.history: list[dict[str, float]] = []

    def step(self, step: int, scalars: dict[str, float]) -> None:
        self.history.append({"step": step, **scalars})
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(f"train/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in scalars.items()}, step=step)
        if self.is_main:
            log.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))

    def resume(self, history: list[dict[str, float]], tokens: int) -> None:
        """Curves and token count of the run that was cut; speed counts this process only, from
        here (the loop calls this after restoring the train state, which is not training)."""
        self.history, self.tokens, self._tokens0 = history, tokens, tokens
        self.t0 = time.time()

    def tokens_per_s(self) -> float:
        return (self.tokens - self._tokens0) / max(time.time() - self.t0, 1e-9)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def write_metrics(path: Path, metrics: dict, is_main: bool) -> dict:
    if is_main:
        atomic_write_json(path, metrics)
    return metrics


def epoch_means(history: list[dict[str, float]], epochs: int,
                key: str = "loss") -> list[float | None]:
    """Per epoch, the mean of `key` over its logged steps (None for an epoch not reached)."""
    return [mean_over([h for h in history if h["epoch"] == e], key) for e in range(epochs)]


def mean_over(history: list[dict[str, float]], key: str, last: int = 0) -> float | None:
    vals = [h[key] for h in history if key in h][-last:] if last else \
        [h[key] for h in history if key in h]
    return sum(vals) / len(vals) if vals else None
