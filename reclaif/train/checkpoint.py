"""Checkpoints, safetensors only (nothing here is ever unpickled).

Two kinds:
- the model checkpoint (phase dir/checkpoint/): an HF directory transformers and the samplers
  load directly. Under ZeRO-3 every parameter is gathered one at a time and rank 0 writes it
  into a safetensors shard of bounded size (no full model on its host); a LoRA model is merged
  into its base (peft's merge_and_unload) before saving. Written to
  a temporary directory and renamed, so a reader sees the old checkpoint or the whole new one.
- the training state (phase dir/train_state/step-N/): what a rerun needs to continue mid-epoch:
  trainable weights and AdamW moments (torch engine), or each rank's ZeRO-3 partition of the
  fp32 master weights and moments (DeepSpeed), the scheduler, and the data position. Tensors go
  to safetensors, everything else to JSON.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from reclaif.atomic import atomic_write_json, read_json, replace_dir_durably
from reclaif.errors import CheckpointError

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step-(\d+)$")


def _gathered(params: list[nn.Parameter]) -> contextlib.AbstractContextManager:
    if any(hasattr(p, "ds_id") for p in params):  # ds_id: DeepSpeed ZeRO-3's partition mark
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()


def gather_state_dict(model: nn.Module, is_main: bool, trainable_only: bool = False) -> dict:
    """Full CPU tensors on rank 0 ({} elsewhere); every rank must call it (ZeRO-3 gathers).
    Tied weights appear once (named_parameters deduplicates them)."""
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        with _gathered([p]):
            if is_main:
                out[name] = p.detach().to("cpu", copy=True).contiguous()
    if not trainable_only and is_main:
        keys = set(model.state_dict().keys())
        for name, b in model.named_buffers():
            if name in keys:
                out[name] = b.detach().to("cpu", copy=True).contiguous()
    return out


def _replace_dir(tmp: Path, target: Path) -> None:
    """tmp becomes target; an older target is moved aside first and removed after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    replace_dir_durably(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _plain_model(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A CPU copy of the HF model with `state` loaded; LoRA merged away when present."""
    from transformers import AutoModelForCausalLM

    is_peft = hasattr(model, "peft_config")  # PEFT-wrapped models only; peft stays unimported
    base_cfg = model.get_base_model().config if is_peft else model.config
    dtype = next(iter(state.values())).dtype if state else torch.float32
    fresh = AutoModelForCausalLM.from_config(base_cfg, dtype=dtype)
    if is_peft:
        from peft import get_peft_model

        fresh = get_peft_model(fresh, model.peft_config["default"])
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"state dict does not match the model: missing "
                              f"{sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]}")
    if is_peft:
        fresh = fresh.merge_and_unload()
    fresh.tie_weights()
    return fresh


@contextlib.contextmanager
def disk_errors(path: Path):
    """safetensors reports a full disk as SafetensorError("... (os error 28)"), not OSError:
    turned back into the OSError it is, so the CLI prints its one line (cannot write PATH: No
    space left on device ...) instead of a traceback."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as e:
        m = re.search(r"os error (\d+)", str(e))
        if m is None:
            raise CheckpointError(f"{path}: could not be written ({e})") from None
        code = int(m.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


def save_hf_checkpoint(model: nn.Module, tokenizer: Any, out_dir: str | Path, is_main: bool,
                       barrier: Any = None, shard_bytes: int = 2 * 1024 ** 3) -> Path | None:
    """Saves `model` (ZeRO-3 partitioned or not, LoRA or not) as a plain HF safetensors
    directory with its tokenizer. All ranks call it; rank 0 writes.

    A full model never sits on rank 0's host: parameters are gathered one at a time (in the
    dtype they train in: bf16 under DeepSpeed's bf16) and written as safetensors shards of at
    most `shard_bytes`, with transformers' index, as they fill, so rank 0 holds one shard at a
    time (what DeepSpeed's 16-bit gather save does, without its full state dict). A LoRA model
    is merged into a fresh copy of its base first (peft's merge_and_unload)."""
    out = Path(out_dir)
    if hasattr(model, "peft_config"):  # PEFT-wrapped models only; peft stays unimported
        return _save_merged_lora(model, tokenizer, out, is_main, barrier)
    tmp = None
    if is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        names: list[list[str]] = [[]]
        files: list[str] = []

        def flush() -> None:
            nonlocal size
            if not shards[-1]:
                return
            name = f"model-{len(files) + 1:05d}.safetensors"
            with disk_errors(out):  # the user knows the checkpoint, not its temporary name
                save_file(shards[-1], str(tmp / name), metadata={"format": "pt"})
            files.append(name)
            shards[-1], size = {}, 0
            names.append([])

        params = dict(model.named_parameters())  # tied weights appear once
        keys = set(model.state_dict().keys())
        entries = [(n, p) for n, p in params.items()] + \
            [(n, b) for n, b in model.named_buffers() if n in keys]
        for name, t in entries:
            with _gathered([t] if isinstance(t, nn.Parameter) else []):
                if is_main:
                    shards[-1][name] = t.detach().to("cpu", copy=True).contiguous()
                    names[-1].append(name)
                    size += shards[-1][name].numel() * shards[-1][name].element_size()
            if is_main and size >= shard_bytes:
                flush()
        if is_main:
            flush()
            weight_map = {}
            for i, name in enumerate(files):
                for key in names[i]:
                    weight_map[key] = name
            if len(files) == 1:  # one file: transformers' plain name, no index
                os.replace(tmp / files[0], tmp / "model.safetensors")
            else:
                total = sum((tmp / f).stat().st_size for f in files)
                atomic_write_json(tmp / "model.safetensors.index.json",
                                  {"metadata": {"total_size": total}, "weight_map": weight_map})
            config = model.config
            first = next(iter(params.values()), None)
            if first is not None:
                config.dtype = first.dtype  # what the shards hold
            config.save_pretrained(tmp)
            if model.generation_config is not None:  # None where the model cannot generate
                model.generation_config.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            _replace_dir(tmp, out)
            log.info("saved model checkpoint %s (%d shard(s))", out, len(files))
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if barrier is not None:
        barrier()
    return out if is_main else None


def _save_merged_lora(model: nn.Module, tokenizer: Any, out: Path, is_main: bool,
                      barrier: Any) -> Path | None:
    state = gather_state_dict(model, is_main)
    if is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            plain = _plain_model(model, state)
            with disk_errors(out):
                plain.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            _replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("saved model checkpoint %s", out)
    if barrier is not None:
        barrier()
    return out if is_main else None


# --------------------------------------------------------------------------- training state


def flatten_optimizer_state(sd: dict, prefix: str = "opt") -> tuple[dict[str, torch.Tensor], dict]:
    """A torch optimizer state_dict → (tensors for safetensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        rest[str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{pid}.{k}"] = v.detach().to("cpu", copy=True).contiguous()
            else:
                rest[str(pid)][k] = v
    return tensors, {"state": rest, "param_groups": sd["param_groups"]}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict,
                              prefix: str = "opt") -> dict:
    state: dict[int, dict] = {int(pid): dict(v) for pid, v in meta["state"].items()}
    for key, t in tensors.items():
        if key.startswith(prefix + "."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = t
    return {"state": state, "param_groups": meta["param_groups"]}


def _scheduler_state(scheduler: Any) -> dict:
    sd = dict(scheduler.state_dict())
    sd.pop("lr_lambdas", None)
    return sd


def _load_scheduler(scheduler: Any, sd: dict) -> None:
    scheduler.load_state_dict({**sd, "lr_lambdas": [None] * len(scheduler.lr_lambdas)})


def latest_train_state(state_root: str | Path) -> Path | None:
    """The newest complete step-N directory (complete = its meta.json was written)."""
    root = Path(state_root)
    if not root.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := STEP_DIR.match(p.name)) and (p / "meta.json").exists()]
    return max(steps)[1] if steps else None


def save_train_state(strategy: Any, state_root: str | Path, step: int, meta: dict,
                     keep: int = 1) -> Path:
    """Writes train_state/step-N (all ranks call it); older step dirs beyond `keep` go."""
    root = Path(state_root)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if strategy.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    strategy.barrier()
    if strategy.engine_name == "deepspeed":
        opt = strategy.engine.optimizer
        # Only DeepSpeed's ZeRO-3 optimizer has it (stage 1/2 name their flat groups otherwise).
        if not hasattr(opt, "fp32_partitioned_groups_flat"):
            raise CheckpointError("train_state: only ZeRO stage 3 optimizer states are supported")
        sd = opt.state_dict()
        tensors, opt_meta = flatten_optimizer_state(sd["optimizer_state_dict"])
        for i, t in enumerate(sd["fp32_flat_groups"]):
            tensors[f"fp32.{i}"] = t.detach().to("cpu", copy=True).contiguous()
        with disk_errors(tmp):
            save_file(tensors, str(tmp / f"zero-rank{strategy.rank}.safetensors"))
        atomic_write_json(tmp / f"zero-rank{strategy.rank}.json",
                          {"optimizer": opt_meta, "groups": len(sd["fp32_flat_groups"])})
    else:
        weights = gather_state_dict(strategy.module, strategy.is_main, trainable_only=True)
        if strategy.is_main:
            tensors, opt_meta = flatten_optimizer_state(strategy.optimizer.state_dict())
            with disk_errors(tmp):
                save_file(weights, str(tmp / "trainable.safetensors"))
                save_file(tensors, str(tmp / "optimizer.safetensors"))
            atomic_write_json(tmp / "optimizer.json", opt_meta)
    strategy.barrier()
    if strategy.is_main:
        atomic_write_json(tmp / "meta.json", {
            **meta, "step": step, "world_size": strategy.world_size,
            "engine": strategy.engine_name, "scheduler": _scheduler_state(strategy.scheduler)})
        shutil.rmtree(final, ignore_errors=True)
        replace_dir_durably(tmp, final)
        olds = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)))
        for _, p in olds[:-keep] if keep else []:
            shutil.rmtree(p, ignore_errors=True)
        log.info("saved training state %s", final)
    strategy.barrier()
    return final


def load_train_state(strategy: Any, path: str | Path) -> dict:
    """Restores weights, optimizer and scheduler into a prepared strategy; returns meta."""
    path = Path(path)
    meta = read_json(path / "meta.json")
    if meta["engine"] != strategy.engine_name:
        raise CheckpointError(f"{path}: saved by engine '{meta['engine']}', resuming with "
                              f"'{strategy.engine_name}'")
    if strategy.engine_name == "deepspeed":
        if meta["world_size"] != strategy.world_size:
            raise CheckpointError(f"{path}: ZeRO-3 state of {meta['world_size']} processes cannot "
                                  f"resume on {strategy.world_size}")
        from deepspeed.checkpoint.constants import (FP32_FLAT_GROUPS, LOSS_SCALER,
                                                    OPTIMIZER_STATE_DICT)

        opt = strategy.engine.optimizer
        tensors = load_file(str(path / f"zero-rank{strategy.rank}.safetensors"))
        info = read_json(path / f"zero-rank{strategy.rank}.json")
        sd = {LOSS_SCALER: opt.loss_scaler, "dynamic_loss_scale": opt.dynamic_loss_scale,
              "overflow": False,
              OPTIMIZER_STATE_DICT: unflatten_optimizer_state(tensors, info["optimizer"]),
              FP32_FLAT_GROUPS: [tensors[f"fp32.{i}"] for i in range(info["groups"])]}
        opt.checkpoint_event_prologue()
        # load_state_dict picks this rank's entry from the list; the rest is never read.
        opt.load_state_dict([sd] * strategy.world_size)
        opt.checkpoint_event_epilogue()
        strategy.engine.global_steps = meta["step"]
    else:
        weights = load_file(str(path / "trainable.safetensors"))
        named = dict(strategy.module.named_parameters())
        unknown = set(weights) - set(named)
        if unknown:
            raise CheckpointError(f"{path}: weights {sorted(unknown)[:3]} not in the model")
        with torch.no_grad():
            for k, t in weights.items():
                named[k].copy_(t)
        opt_meta = read_json(path / "optimizer.json")
        strategy.optimizer.load_state_dict(
            unflatten_optimizer_state(load_file(str(path / "optimizer.safetensors")), opt_meta))
    _load_scheduler(strategy.scheduler, meta["scheduler"])
    log.info("resumed from %s (step %d)", path, meta["step"])
    return meta


def drop_train_state(state_root: str | Path) -> None:
    """After the model checkpoint is written the phase is done; its resume points go."""
    shutil.rmtree(state_root, ignore_errors=True)
