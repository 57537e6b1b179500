"""The training engine: DeepSpeed ZeRO (owned here, as OpenRLHF's strategy does), or plain torch
in one process or data-parallel over several.

Every launcher (`accelerate launch`, `torchrun`, `deepspeed`, `srun`) sets RANK / WORLD_SIZE /
LOCAL_RANK (srun: SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, mapped here), so the trainer reads
them from the environment and never asks which launcher started it. accelerate's Accelerator
cannot drive DeepSpeed without a GPU (docs/ARCHITECTURE.md, "Training"), hence the engine is
ours.

The recipe calls `strategy.forward(fn, *args)`: the function (a log-prob kernel) runs inside the
wrapped module's forward, so DDP's reducer and DeepSpeed's engine see an ordinary forward.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reclaif.config import TrainConfig
from reclaif.errors import ConfigError

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


class _Forward(nn.Module):
    """Runs `fn(model, *args)` as this module's forward (so DDP/DeepSpeed wrap it as usual)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        return fn(self.model, *args, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from whichever launcher started this process."""
    env = os.environ
    if "RANK" not in env and int(env.get("SLURM_NTASKS", "1")) > 1 and "MASTER_ADDR" in env:
        env.setdefault("RANK", env["SLURM_PROCID"])
        env.setdefault("WORLD_SIZE", env["SLURM_NTASKS"])
        env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def gpus_for(cfg: TrainConfig) -> bool:
    """Whether this process trains on a GPU. A step configured for GPUs (device: cuda, or a
    Slurm allocation with GPUs) that sees none stops here: falling back to gloo on the CPU
    would run a 7B model for days, or run out of host memory."""
    seen = torch.cuda.is_available()
    if cfg.device == "cpu":
        return False
    given = os.environ.get("SLURM_GPUS_ON_NODE", "") or os.environ.get("SLURM_JOB_GPUS", "")
    if not seen and (cfg.device == "cuda" or given not in ("", "0")):
        why = ("device: cuda is configured" if cfg.device == "cuda" else
               f"Slurm gave this job GPUs (SLURM_GPUS_ON_NODE/SLURM_JOB_GPUS={given!r})")
        raise ConfigError(f"training: {why} but torch sees no GPU (torch {torch.__version__}, "
                          f"CUDA build {torch.version.cuda}, CUDA_VISIBLE_DEVICES="
                          f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}); install a CUDA build "
                          f"of torch or set device: cpu")
    return seen


def resolve_ds_config(path: str) -> Path:
    """A DeepSpeed JSON given relative to the working directory or to the repository."""
    for p in (Path(path), REPO / path):
        if p.is_file():
            return p
    raise ConfigError(f"deepspeed_config: {path} not found (looked in . and {REPO})")


def fill_ds_config(raw: dict, cfg: TrainConfig, world_size: int, hidden_size: int,
                   on_gpu: bool) -> dict:
    """Fills DeepSpeed's "auto" values from the run config, which stays the one source of truth
    for batch sizes, clipping, precision and the learning-rate schedule."""
    ds = json.loads(json.dumps(raw))
    ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
    ds["gradient_accumulation_steps"] = cfg.grad_accum
    ds["train_batch_size"] = cfg.batch_size * cfg.grad_accum * world_size
    ds["gradient_clipping"] = cfg.max_grad_norm
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bool(cfg.bf16)}
    ds.pop("fp16", None)
    ds.setdefault("steps_per_print", 10**9)
    if "scheduler" in ds:
        log.info("deepspeed config: dropping its scheduler; the run config's warm-up + cosine rules")
        ds.pop("scheduler")
    zero = ds.setdefault("zero_optimization", {})
    autos = {"reduce_bucket_size": hidden_size * hidden_size,
             "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
             "stage3_param_persistence_threshold": 10 * hidden_size}
    for k, v in autos.items():
        if zero.get(k) == "auto":
            zero[k] = v
    if "optimizer" in ds and on_gpu:
        params = ds["optimizer"].setdefault("params", {})
        for k, v in {"lr": cfg.lr, "weight_decay": cfg.weight_decay,
                     "betas": [0.9, 0.999], "eps": 1e-8}.items():
            if params.get(k, "auto") == "auto":
                params[k] = v
    else:
        # DeepSpeedCPUAdam is a C++ extension compiled on first use (minutes, and it hangs on
        # hosts without a toolchain); torch's AdamW steps the offloaded fp32 partitions instead.
        ds.pop("optimizer", None)
        ds["zero_force_ds_cpu_optimizer"] = False
    left = [k for k, v in _walk(ds) if v == "auto"]
    if left:
        raise ConfigError(f"deepspeed config: no value for 'auto' at {', '.join(left)}")
    return ds


def _walk(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict):
        return [kv for k, v in d.items() for kv in _walk(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), d)]


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int,
                       warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay. Written here rather than transformers'
    get_cosine_schedule_with_warmup because that one gives the first step lr 0: a wasted step,
    half of a two-step DPO iteration. Warm-up step s (from 0) uses (s + 1) / (warmup + 1) of
    the peak."""
    total = max(total_steps, 1)
    warmup = int(math.ceil(warmup_ratio * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Strategy:
    """One training engine for one phase: set up, wrap the model, step, and tear down."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.rank, self.world_size, self.local_rank = launcher_env()
        self.engine_name = cfg.engine
        self.on_gpu = gpus_for(cfg)
        self.device = torch.device(f"cuda:{self.local_rank}" if self.on_gpu else "cpu")
        self._owns_group = False
        self.timeout = datetime.timedelta(seconds=cfg.collective_timeout_s)
        self.engine: Any = None
        self.optimizer: Any = None
        self.scheduler: Any = None
        self.module: nn.Module | None = None  # the HF (or peft) model being trained
        self._step_lr: float | None = None  # the rate the last optimizer step used

    # ------------------------------------------------------------------ process group
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    def setup(self) -> "Strategy":
        if self.on_gpu:
            torch.cuda.set_device(self.local_rank)
        backend = "nccl" if self.on_gpu else "gloo"
        if self.engine_name == "deepspeed":
            os.environ.setdefault("DS_ACCELERATOR", "cuda" if self.on_gpu else "cpu")
            if self.world_size == 1 and "MASTER_ADDR" not in os.environ:
                # In-process (tests, the one-machine quickstart): a group of one.
                os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                                  MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
            if not self.distributed:
                import deepspeed

                if not self.on_gpu:
                    # gloo does the collectives; DeepSpeed's optional shared-memory op would be
                    # JIT-compiled first (minutes on 2 cores; a killed build leaves a lock
                    # that hangs every later run).
                    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
                deepspeed.init_distributed(dist_backend=backend, timeout=self.timeout)
                self._owns_group = True
        elif self.world_size > 1 and not self.distributed:
            torch.distributed.init_process_group(backend=backend, timeout=self.timeout)
            self._owns_group = True
        torch.manual_seed(self.cfg.seed)
        return self

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        if not self.distributed or not values:
            return dict(values)
        keys = sorted(values)
        # on the group's device: NCCL has no CPU tensors (gloo is fine with either)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    def any_flag(self, flag: bool) -> bool:
        """True on every rank if any rank raised the flag (preemption must be unanimous)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def close(self) -> None:
        if self._owns_group and self.distributed:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
            if self.engine_name == "deepspeed":
                # DeepSpeed caches its clone of the world group; the next phase in this process
                # (the in-process driver runs SFT then DPO) would hand the destroyed one to
                # the new engine ("Group ... is not registered").
                from deepspeed.utils import groups

                groups._WORLD_GROUP = None
                groups._ZERO_PARAM_INTRA_PARALLEL_GROUP = None
        self._owns_group = False

    # ------------------------------------------------------------------ model and optimizer
    def ds_config(self, hidden_size: int) -> dict:
        raw = json.loads(resolve_ds_config(self.cfg.deepspeed_config).read_text())
        return fill_ds_config(raw, self.cfg, self.world_size, hidden_size, self.on_gpu)

    def zero3_config(self, model_dir: str) -> dict | None:
        """The filled DeepSpeed config when this engine is ZeRO stage 3 (models are then built
        inside zero.Init, see session.load_policy), else None."""
        if self.engine_name != "deepspeed":
            return None
        hidden = int(json.loads((Path(model_dir) / "config.json").read_text())
                     .get("hidden_size", 1024))
        ds = self.ds_config(hidden)
        return ds if ds.get("zero_optimization", {}).get("stage") == 3 else None

    def prepare(self, model: nn.Module, total_steps: int) -> None:
        """Wraps `model` for training with AdamW and warm-up + cosine over `total_steps`."""
        self.module = model
        params = [p for p in model.parameters() if p.requires_grad]
        wrapper = _Forward(model)
        if self.engine_name == "deepspeed":
            import deepspeed

            # Every HF config answers hidden_size (attribute_map); a bare nn.Module has no config.
            hidden = int(getattr(getattr(model, "config", None), "hidden_size", 1024))
            ds = self.ds_config(hidden)
            optimizer = None if "optimizer" in ds else torch.optim.AdamW(
                params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
            sched = (cosine_with_warmup(optimizer, total_steps, self.cfg.warmup_ratio)
                     if optimizer is not None else
                     (lambda opt: cosine_with_warmup(opt, total_steps, self.cfg.warmup_ratio)))
            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=wrapper, model_parameters=params, optimizer=optimizer, lr_scheduler=sched,
                config=ds)
            return
        wrapper.to(self.device)
        self.optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.scheduler = cosine_with_warmup(self.optimizer, total_steps, self.cfg.warmup_ratio)
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.engine = DistributedDataParallel(
                wrapper, device_ids=[self.local_rank] if self.on_gpu else None)
        else:
            self.engine = wrapper

    def forward(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        if self.engine_name == "deepspeed":
            # Not engine.forward: inside it ZeRO-3 "discovers" the lm_head weight the kernel
            # reads as an external parameter of the wrapper and keeps it fetched, which then
            # clashes with the kernel's own gather. DeepSpeed's module hooks still run.
            # DeepSpeed 0.19's ZeRO optimizers have it; older releases' and non-ZeRO ones do not.
            if hasattr(self.engine.optimizer, "clear_backward_seen_flag"):
                self.engine.optimizer.clear_backward_seen_flag()
            return fn(self.engine.module.model, *args, **kwargs)
        return self.engine(fn, *args, **kwargs)

    def eval_forward(self, model: nn.Module) -> Callable[..., Any]:
        """A frozen model for inference only (a reference model): ZeRO-3 partitioned without an
        optimizer under DeepSpeed, so it costs 1/world of its size per rank. Returns a function
        called like `forward`; drop it when done."""
        model.requires_grad_(False)
        wrapper = _Forward(model).eval()
        if self.engine_name != "deepspeed":
            return wrapper.to(self.device)
        import deepspeed

        # Every HF config answers hidden_size (attribute_map); a bare nn.Module has no config.
        hidden = int(getattr(getattr(model, "config", None), "hidden_size", 1024))
        ds = {"train_micro_batch_size_per_gpu": self.cfg.batch_size,
              "gradient_accumulation_steps": 1,
              "train_batch_size": self.cfg.batch_size * self.world_size,
              "bf16": {"enabled": bool(self.cfg.bf16)}, "steps_per_print": 10**9,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 10 * hidden}}
        engine, *_ = deepspeed.initialize(model=wrapper, config=ds)
        engine.eval()
        # around engine.forward, as in `forward` (the kernel gathers lm_head itself)
        return lambda fn, *args, **kwargs: fn(engine.module.model, *args, **kwargs)

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: (v.to(self.device) if torch.is_tensor(v) else
                    self.to_device(v) if isinstance(v, dict) else v) for k, v in batch.items()}

    def autocast(self):
        """bf16 autocast for the torch engine, on GPUs and on CPU (DeepSpeed casts the weights
        itself). Every forward of a phase runs under it: the policy's and the reference's."""
        if self.cfg.bf16 and self.engine_name == "torch":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        import contextlib

        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        """One micro-batch's backward; gradients are synchronised only at `boundary`."""
        if self.engine_name == "deepspeed":
            self.engine.backward(loss)
            return
        scaled = loss / self.cfg.grad_accum
        if self.world_size > 1 and not boundary:
            with self.engine.no_sync():
                scaled.backward()
        else:
            scaled.backward()

    def step(self) -> float:
        """Optimizer + scheduler step at an accumulation boundary; returns the gradient norm."""
        self._step_lr = self.lr()  # the rate this step uses; the scheduler moves on below
        if self.engine_name == "deepspeed":
            self.engine.step()
            norm = self.engine.get_global_grad_norm()
            return float(norm) if norm is not None else float("nan")
        params = [p for p in self.module.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def micro_step(self) -> None:
        """DeepSpeed counts micro-steps itself: engine.step() is called after every backward."""
        if self.engine_name == "deepspeed":
            self.engine.step()

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def step_lr(self) -> float:
        """The learning rate the last optimizer step used (what a log line should show)."""
        return self.lr() if self._step_lr is None else self._step_lr

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)
