"""Reference log-probs, computed once per iteration and stored beside the pairs
(iter-NNN/ref_logps.jsonl), so no reference model sits in training memory.

Rows: {"example_id", "chosen", "rejected", "chosen_tokens", "rejected_tokens", "dtype", "model",
"source"}: log-prob sums of each answer given its prompt, how many answer tokens they cover (the
trainer checks these against its own tokenisation, so a stale file is refused rather than
silently used), the dtype and model they were computed in, and how (source "forward": a
reference pass; "sampling": the sums the sampler returned, sampled_reference). A resumed DPO whose reference dtype or model differs from the file's (or a
file from before these fields) recomputes it: bf16 rounding moves the sums by more than the
first step's margins.
The pairs are split over the ranks (every rank runs the same number of forwards, as ZeRO-3's
collectives need); rank 0 gathers and writes the file.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch

from reclaif.atomic import atomic_write_jsonl, read_jsonl
from reclaif.errors import DataError
from reclaif.train.data import collate_pairs
from reclaif.train.fused_dpo import pair_hidden
from reclaif.train.groups import collate_groups, group_logps
from reclaif.train.logprobs import sequence_logps


def pair_logps(model: torch.nn.Module, chosen: dict, rejected: dict, chunk: int,
               kernel: str = "auto", shared_prompt: bool = False,
               device: torch.device | str | None = None) -> torch.Tensor:
    """[B, 4]: chosen sum, rejected sum, chosen count, rejected count (one forward for both,
    the policy's: fused_dpo.pair_hidden, so a shared-prompt policy has a shared-prompt
    reference and both see the same rounding)."""
    B = chosen["input_ids"].shape[0]
    hidden, labels, weight = pair_hidden(model, chosen, rejected, shared_prompt,
                                       None if device is None else torch.device(device))
    s, n = sequence_logps(hidden, weight, labels.to(hidden.device), chunk, kernel=kernel)
    return torch.stack([s[:B], s[B:], n[:B].float(), n[B:].float()], 1)


@torch.no_grad()
def compute_reference_logps(forward: Callable[..., Any], encoded: list[dict], pad_id: int,
                            batch_size: int, chunk: int, rank: int = 0, world_size: int = 1,
                            device: torch.device | str = "cpu",
                            kernel: str = "auto",
                            shared_prompt: bool = False) -> list[dict] | None:
    """`forward(fn, *args)` runs fn(model, *args) on the reference model (a Strategy's forward,
    or a plain call); shared_prompt as the policy's (fused_dpo.pair_hidden). Returns the rows
    on rank 0, None elsewhere."""
    n = len(encoded)
    per_rank = math.ceil(n / world_size)
    mine = [rank + world_size * j for j in range(per_rank)]  # >= n: padding, result dropped
    out = torch.full((per_rank, 5), -1.0, dtype=torch.float64)
    for s in range(0, per_rank, batch_size):
        idx = mine[s:s + batch_size]
        items = [encoded[min(i, n - 1)] for i in idx]
        batch = collate_pairs(items, pad_id)  # on the host: pair_hidden moves what it runs
        vals = forward(lambda m, a, b: pair_logps(m, a, b, chunk, kernel, shared_prompt,
                                                  device),
                       batch["chosen"], batch["rejected"]).double().cpu()
        out[s:s + len(idx), 0] = torch.tensor(idx, dtype=torch.float64)
        out[s:s + len(idx), 1:] = vals
    out = _gather_to_rank0(out, rank, world_size, device)
    if out is None:
        return None
    rows: dict[int, dict] = {}
    for i, c, r, nc, nr in out.tolist():
        if 0 <= i < n:
            rows[int(i)] = {"example_id": encoded[int(i)]["example_id"], "chosen": c,
                            "rejected": r, "chosen_tokens": int(nc), "rejected_tokens": int(nr)}
    return [rows[i] for i in range(n)]


def _gather_to_rank0(out: torch.Tensor, rank: int, world_size: int,
                     device: torch.device | str) -> torch.Tensor | None:
    """Every rank's rows [per_rank, C] (one shape on all ranks), concatenated in rank order on
    rank 0's host; None on the other ranks. Each row carries its record's index, so the caller
    orders them and drops the padding rows. all_gather, not gather: every backend has it."""
    if world_size > 1:
        out = out.to(device)  # NCCL gathers device tensors only
        parts = [torch.empty_like(out) for _ in range(world_size)]
        torch.distributed.all_gather(parts, out)
        out = torch.cat(parts).cpu()
    return out if rank == 0 else None


def sampled_reference(encoded: list[dict], model: str, dtype: str) -> dict[int, dict]:
    """Reference rows (by pair index) taken from the sampling pass: in iteration i the
    reference is the policy that sampled the answers, and the sampler summed each answer's
    log-probs under its untempered, unfiltered softmax, which is what a reference forward
    computes. Only for pairs encoded from exactly the sampled tokens (encode_pairs'
    sampled_ref) by `model` in `dtype`; every other pair needs the forward. fp32 only: in
    bf16 the sampler's cached decode and the trainer's forward (autocast over fp32 weights,
    or DeepSpeed's bf16 ones) round differently, by more than DPO's first-step margins."""
    if dtype != "float32":
        return {}
    out = {}
    for i, e in enumerate(encoded):
        by = e.get("sampled_by") or {}
        if "sampled_ref" not in e or by.get("dtype") != dtype or not _same_path(
                by.get("model", ""), model):
            continue
        c, r = e["sampled_ref"]
        out[i] = {"example_id": e["example_id"], "chosen": c, "rejected": r,
                  "chosen_tokens": sum(e["chosen"]["loss_mask"]),
                  "rejected_tokens": sum(e["rejected"]["loss_mask"]), "source": "sampling"}
    return out


def _same_path(a: str, b: str) -> bool:
    return bool(a) and (a == b or Path(a).resolve() == Path(b).resolve())


def write_reference_logps(path: str | Path, rows: list[dict], dtype: str, model: str) -> None:
    """The rows with the dtype and model they were computed in, and their source: "sampling"
    where sampled_reference gave them, else "forward"."""
    atomic_write_jsonl(path, [{**r, "dtype": dtype, "model": model,
                               "source": r.get("source", "forward")} for r in rows])


def stale_reason(path: str | Path, dtype: str, model: str) -> str | None:
    """Why the stored reference log-probs at `path` cannot be reused for a reference run in
    `dtype` on `model` (None: they can)."""
    rows = read_jsonl(path)
    if not rows:
        return "it is empty"
    got = (rows[0].get("dtype"), rows[0].get("model"))
    if got == (None, None):
        return "it does not say which dtype and model computed it (written by an older version)"
    if got != (dtype, model):
        return (f"it was computed in {got[0]} on {got[1]}, this run's reference is {dtype} "
                f"on {model}")
    return None


def attach_reference_logps(path: str | Path, encoded: list[dict]) -> int:
    """Adds ref_chosen/ref_rejected to each encoded pair, in order, checking ids and lengths;
    returns how many rows came from the sampling pass."""
    rows = read_jsonl(path)
    if len(rows) != len(encoded):
        raise DataError(f"{path}: {len(rows)} rows for {len(encoded)} pairs; delete it to recompute")
    for n, (row, pair) in enumerate(zip(rows, encoded), 1):
        if str(row["example_id"]) != pair["example_id"]:
            raise DataError(f"{path}:{n}: example_id {row['example_id']!r} but the pair is "
                            f"{pair['example_id']!r}; delete it to recompute")
        for side in ("chosen", "rejected"):
            want = sum(pair[side]["loss_mask"][1:])
            got = row.get(f"{side}_tokens", want)
            if got != want:
                raise DataError(f"{path}:{n}: {side} covers {got} tokens, this tokenisation "
                                f"{want} (max_length or tokenizer changed); delete it to recompute")
        pair["ref_chosen"], pair["ref_rejected"] = float(row["chosen"]), float(row["rejected"])
    return sum(1 for row in rows if row.get("source") == "sampling")


# ------------------------------------------------------------------ S-DPO's answer groups
# Rows {"example_id", "answers": [log-prob sum per answer, chosen first], "answer_tokens":
# [tokens each covers], "dtype", "model", "source"}, in the same file (ref_logps.jsonl): a run's
# loss type is frozen with its config, and a pair row fails attach_group_reference_logps.

@torch.no_grad()
def compute_group_reference_logps(forward: Callable[..., Any], encoded: list[dict], pad_id: int,
                                  batch_size: int, chunk: int, rank: int = 0,
                                  world_size: int = 1, device: torch.device | str = "cpu",
                                  kernel: str = "auto") -> list[dict] | None:
    """compute_reference_logps for groups (encode_groups' records), each group's prompt run
    once (groups.group_logps, the policy's forward). Rows on rank 0, None elsewhere."""
    n = len(encoded)
    per_rank = math.ceil(n / world_size)
    mine = [rank + world_size * j for j in range(per_rank)]  # >= n: padding, result dropped
    width = max(len(e["answers"]) for e in encoded)
    # [index, N, sums..., counts...]; each rank's tensor has one shape for all_gather
    out = torch.full((per_rank, 2 + 2 * width), -1.0, dtype=torch.float64)
    dev = torch.device(device)
    for s in range(0, per_rank, batch_size):
        idx = mine[s:s + batch_size]
        items = [encoded[min(i, n - 1)] for i in idx]
        batch = collate_groups([it["answers"] for it in items], pad_id)
        sums, counts = forward(lambda m, b: group_logps(m, b, chunk, kernel, device=dev), batch)
        sums, counts = sums.double().cpu(), counts.double().cpu()
        start = 0
        for r, (i, size) in enumerate(zip(idx, batch["sizes"])):
            row = out[s + r]
            row[0], row[1] = i, size
            row[2:2 + size] = sums[start:start + size]
            row[2 + width:2 + width + size] = counts[start:start + size]
            start += size
    out = _gather_to_rank0(out, rank, world_size, device)
    if out is None:
        return None
    rows: dict[int, dict] = {}
    for values in out.tolist():
        i, size = int(values[0]), int(values[1])
        if 0 <= i < n:
            rows[i] = {"example_id": encoded[i]["example_id"], "answers": values[2:2 + size],
                       "answer_tokens": [int(c) for c in values[2 + width:2 + width + size]]}
    return [rows[i] for i in range(n)]


def sampled_group_reference(encoded: list[dict], model: str, dtype: str) -> dict[int, dict]:
    """sampled_reference for groups: the sampling pass's sums where every answer of a group
    was encoded whole from its sampled tokens (encode_groups' sampled_ref) by `model` in
    `dtype`; fp32 only, for sampled_reference's reason."""
    if dtype != "float32":
        return {}
    out = {}
    for i, e in enumerate(encoded):
        by = e.get("sampled_by") or {}
        if "sampled_ref" not in e or by.get("dtype") != dtype or not _same_path(
                by.get("model", ""), model):
            continue
        out[i] = {"example_id": e["example_id"], "answers": list(e["sampled_ref"]),
                  "answer_tokens": [sum(r["loss_mask"]) for r in e["answers"]],
                  "source": "sampling"}
    return out


def attach_group_reference_logps(path: str | Path, encoded: list[dict]) -> int:
    """Adds `ref` (the reference's sum per answer) to each encoded group, in order, checking
    ids and token counts; returns how many rows came from the sampling pass."""
    rows = read_jsonl(path)
    if len(rows) != len(encoded):
        raise DataError(f"{path}: {len(rows)} rows for {len(encoded)} groups; delete it to "
                        "recompute")
    for n, (row, group) in enumerate(zip(rows, encoded), 1):
        if str(row.get("example_id")) != group["example_id"] or "answers" not in row:
            raise DataError(f"{path}:{n}: not the reference of group {group['example_id']!r} "
                            f"(example_id {row.get('example_id')!r}, fields {sorted(row)}); "
                            "delete it to recompute")
        want = [sum(r["loss_mask"][1:]) for r in group["answers"]]
        got = row.get("answer_tokens", want)
        if got != want:
            raise DataError(f"{path}:{n}: the answers cover {got} tokens, this tokenisation "
                            f"{want} (max_length or tokenizer changed); delete it to recompute")
        group["ref"] = [float(x) for x in row["answers"]]
    return sum(1 for row in rows if row.get("source") == "sampling")
