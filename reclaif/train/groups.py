"""S-DPO on answer groups: one prompt, a chosen answer and several rejected ones, packed as ONE
row [prompt | chosen | rejected_1 | ... ] so the prompt (most of a recommendation group's tokens)
runs once for the whole group.

The pair path's shared-prompt forward (reclaif.train.data.share_prompt and
reclaif.train.fused_dpo.pair_hidden) does this for two answers; here it is N: every answer's
positions continue from the prompt's length, as in its own row, and the 4D additive mask
(fused_dpo.shared_prompt_mask, whose rule is segment-agnostic) lets each answer see the prompt
and itself only. The answers' predictor positions are then gathered and go through the chunked
log-prob kernel (reclaif.train.logprobs.sequence_logps, no [tokens, vocab] logits), and the
sequence log-probs into losses.sdpo_losses. Unlike fused_dpo's kernel, the loss is not formed
inside the chunk loop: sequence_logps's backward recomputes each chunk's logits (one lm_head
matmul more per chunk than fused_dpo_loss spends), the price of reusing the kernel as it is.

Layout of a group batch (collate_groups): `answers`, the padded batch of every answer of every
group as its own row prompt+answer (pad_batch's input_ids, attention_mask, loss_mask), groups one
after another, each group's chosen answer first; `sizes`, the number of answers per group (>= 2).
The reference log-probs are one flat [sum(sizes)] tensor in the same row order (group_logps).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reclaif.records import AnswerGroup
from reclaif.train.data import PROMPT, answer_room, answer_tokens, pad_batch, prompt_tokens
from reclaif.train.fused_dpo import shared_prompt_mask, to_device_async
from reclaif.train.logprobs import (body_and_weight, final_hidden, sequence_logps,
                                    shifted_labels)
from reclaif.train.losses import sdpo_losses, sdpo_metrics

PADDING = -1  # the segment of padding; answer k of a group (chosen: 0) is segment k + 1


def encode_group(tokenizer: Any, prompt: str, answers: list[str], max_length: int,
                 truncated: list[bool] | None = None, ids: list[list[int] | None] | None = None,
                 example_id: str = "?") -> list[dict[str, list[int]]]:
    """A group's answers (chosen first) as rows prompt+answer that share the SAME prompt tokens,
    by encode_pair's rules (reclaif.train.data): the prompt whole, the answers cut from the
    right to what it leaves (too little room: a DataError naming the example); a `truncated`
    answer (stopped at max_new_tokens) without the end of turn it never emitted; `ids`, an
    answer's tokens as sampled, used as they are instead of re-tokenising its text."""
    if len(answers) < 2:
        raise ValueError(f"encode_group: a group needs a chosen and a rejected answer, got "
                         f"{len(answers)} answer(s)")
    capped = list(truncated or []) + [False] * len(answers)
    sampled = list(ids or []) + [None] * len(answers)
    p = prompt_tokens(tokenizer, prompt)
    encoded = [list(t) if t else answer_tokens(tokenizer, a, not c)
               for a, c, t in zip(answers, capped, sampled)]
    room = answer_room(example_id, len(p), max(len(a) for a in encoded), max_length)
    return [{"input_ids": p + a[:room], "loss_mask": [0] * len(p) + [1] * len(a[:room])}
            for a in encoded]


def encode_groups(tokenizer: Any, groups: list[AnswerGroup], max_length: int) -> list[dict]:
    """AnswerGroups → {example_id, answers: encode_group's rows}, plus sampled_ref (each
    answer's log-prob sum from the sampling pass) and sampled_by where every answer carries its
    sampled tokens and log-prob and is encoded whole (reference.sampled_group_reference)."""
    out = []
    for g in groups:
        ids = [g.chosen_ids, *g.rejected_ids]
        logps = [g.chosen_logp, *g.rejected_logps]
        rows = encode_group(tokenizer, g.prompt, [g.chosen, *g.rejected], max_length,
                            [g.chosen_truncated, *g.rejected_truncated], ids, g.example_id)
        e: dict[str, Any] = {"example_id": g.example_id, "answers": rows}
        whole = all(t and sum(r["loss_mask"]) == len(t) for t, r in zip(ids, rows))
        if whole and all(lp is not None for lp in logps):
            e["sampled_ref"] = [float(lp) for lp in logps]
            e["sampled_by"] = dict(g.sampled_by)
        out.append(e)
    return out


def collate_groups(groups: list[list[dict[str, list[int]]]], pad_id: int) -> dict[str, Any]:
    """Encoded groups (encode_group's rows, chosen first) → {answers: pad_batch of all rows,
    sizes: answers per group}."""
    for g, rows in enumerate(groups):
        if len(rows) < 2:
            raise ValueError(f"collate_groups: group {g} has {len(rows)} answer(s); S-DPO needs "
                             "a chosen and at least one rejected answer")
    return {"answers": pad_batch([r for rows in groups for r in rows], pad_id),
            "sizes": [len(rows) for rows in groups]}


def pack_groups(answers: dict[str, Tensor], sizes: list[int],
                ignore_index: int = -100) -> dict[str, Tensor]:
    """collate_groups' rows as ONE row per group, [prompt | answer_0 | answer_1 | ...], the
    N-answer form of data.share_prompt. The prompt is each row's leading tokens outside the loss
    mask, the same for every answer of a group (checked).

    Returns, on the host: input_ids, position_ids (every answer continues from the prompt's
    length) and segment (PROMPT, k + 1 for answer k, PADDING) [G, L]; and per answer row, in
    `answers`' order, gather [R, W], the flat position in [G*L] of the hidden state that
    predicts each counted token, and labels [R, W], that token (ignore_index after the row's
    last): the tokens shifted_labels counts in the answer's own row, moved to the packed row
    (the last prompt position predicts every answer's first token)."""
    R = answers["input_ids"].shape[0]
    if sum(sizes) != R or min(sizes, default=2) < 2:
        raise ValueError(f"pack_groups: sizes {sizes} (each >= 2) must add up to the {R} answer "
                         "rows")
    labels = shifted_labels(answers["input_ids"], answers["attention_mask"],
                            answers["loss_mask"], ignore_index)
    rows: list[tuple[Tensor, Tensor, Tensor]] = []
    gathers: list[tuple[int, Tensor, Tensor]] = []  # (group, packed predictor positions, tokens)
    start = 0
    for g, n in enumerate(sizes):
        ids, pos, seg = [], [], []
        P = -1
        for k in range(n):
            i = start + k
            length = int(answers["attention_mask"][i].sum())
            prompt_len = int((answers["loss_mask"][i, :length].cumsum(0) == 0).sum())
            if k == 0:
                P = prompt_len
                prompt = answers["input_ids"][i, :P]
                ids.append(prompt), pos.append(torch.arange(P))
                seg.append(torch.full((P,), PROMPT))
            elif prompt_len != P or not torch.equal(answers["input_ids"][i, :P], prompt):
                raise ValueError(f"pack_groups: group {g}'s answer {k} starts with another prompt "
                                 f"({prompt_len} tokens, the chosen row's {P}); encode_group gives "
                                 "every answer the same")
            offset = sum(len(t) for t in ids) - P  # where this answer's body starts, less P
            ids.append(answers["input_ids"][i, P:length])
            pos.append(torch.arange(P, length))
            seg.append(torch.full((length - P,), k + 1))
            t = (labels[i] != ignore_index).nonzero().squeeze(1)
            gathers.append((g, torch.where(t < P, t, t + offset), labels[i, t]))
        rows.append((torch.cat(ids), torch.cat(pos), torch.cat(seg)))
        start += n
    G, L = len(sizes), max(len(r[0]) for r in rows)
    W = max(1, max(len(t) for _, t, _ in gathers))
    out = {"input_ids": torch.zeros(G, L, dtype=torch.long),
           "position_ids": torch.zeros(G, L, dtype=torch.long),
           "segment": torch.full((G, L), PADDING, dtype=torch.long),
           "gather": torch.zeros(R, W, dtype=torch.long),
           "labels": torch.full((R, W), ignore_index, dtype=torch.long)}
    for g, row in enumerate(rows):
        for key, v in zip(("input_ids", "position_ids", "segment"), row):
            out[key][g, :len(v)] = v
    for i, (g, t, tokens) in enumerate(gathers):
        out["gather"][i, :len(t)] = g * L + t
        out["labels"][i, :len(t)] = tokens
    return out


def group_logps(model: torch.nn.Module, batch: dict[str, Any], chunk_size: int = 1024,
                kernel: str = "auto", weight_grad_acc: str = "fp32",
                device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Sequence log-prob sums [R] fp32 and token counts [R] of every answer row of a group batch
    (collate_groups), each group's prompt run once. Differentiable; under torch.no_grad it is
    the reference pass, with the policy's own forward (same rounding). `model`: the HF model or
    the DeepSpeed engine (see logprobs._unwrap)."""
    body, weight = body_and_weight(model)
    dev = device or weight.device
    rows = pack_groups(batch["answers"], batch["sizes"])
    dtype = body.get_input_embeddings().weight.dtype  # as HF's own eager masks
    mask = shared_prompt_mask(to_device_async(rows["segment"], dev), dtype)
    flat = final_hidden(body, to_device_async(rows["input_ids"], dev), mask,
                        to_device_async(rows["position_ids"], dev)).flatten(0, 1)
    index = to_device_async(rows["gather"], dev)
    hidden = flat[index.flatten()].view(*index.shape, -1)
    return sequence_logps(hidden, weight, rows["labels"].to(dev), chunk_size, kernel=kernel,
                          weight_grad_acc=weight_grad_acc)


def split_groups(flat: Tensor, sizes: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """A flat [R] per-answer tensor (groups one after another, chosen first) → chosen [G],
    rejected [G, N-1] (0 on padding) and the rejected mask [G, N-1] bool, N the largest group."""
    G, N = len(sizes), max(sizes)
    starts = torch.tensor([0, *sizes[:-1]]).cumsum(0)
    k = torch.arange(1, N)
    mask = k[None, :] < torch.tensor(sizes)[:, None]
    index = (starts[:, None] + k[None, :]).masked_fill(~mask, 0).to(flat.device)
    rejected = flat[index.flatten()].view(G, N - 1).masked_fill(~mask.to(flat.device), 0.0)
    return flat[starts.to(flat.device)], rejected, mask.to(flat.device)


def fused_sdpo_loss(model: torch.nn.Module, batch: dict[str, Any], ref_logps: Tensor,
                    beta: float, chunk_size: int = 1024, kernel: str = "auto",
                    weight_grad_acc: str = "fp32", device: torch.device | None = None,
                    rpo_alpha: float = 0.0) -> tuple[Tensor, dict]:
    """Mean S-DPO loss over the groups of `batch` (collate_groups) and its metrics (loss,
    rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies as in
    losses.sdpo_metrics; logps/chosen, logps/rejected), as 0-dim detached fp32 tensors.
    ref_logps: the reference's log-prob sums [R] in the batch's row order (group_logps under
    no_grad with the reference model). rpo_alpha: RPO's NLL term on the chosen answers, as
    fused_dpo_loss adds it (rpo_alpha x -sum(chosen log-probs) / chosen tokens; the metrics'
    loss leaves it out, as there). With two answers per group it is fused_dpo_loss's sigmoid
    loss."""
    sizes = batch["sizes"]
    R = sum(sizes)
    if ref_logps.shape != (R,):
        raise ValueError(f"fused_sdpo_loss: ref_logps {tuple(ref_logps.shape)} must be [{R}], "
                         "one per answer row")
    if not rpo_alpha >= 0:
        raise ValueError(f"fused_sdpo_loss: rpo_alpha {rpo_alpha} must be >= 0")
    logps, counts = group_logps(model, batch, chunk_size, kernel, weight_grad_acc, device)
    pc, pr, mask = split_groups(logps, sizes)
    rc, rr, _ = split_groups(ref_logps.to(logps.device, logps.dtype), sizes)
    losses, r_w, r_j = sdpo_losses(pc, pr, rc, rr, beta, mask)
    metrics = sdpo_metrics(losses, r_w, r_j, mask)
    metrics["logps/chosen"] = pc.detach().mean()
    metrics["logps/rejected"] = pr.detach()[mask].mean()
    loss = losses.mean()
    if rpo_alpha:
        chosen_tokens = split_groups(counts.to(logps.dtype), sizes)[0].sum().clamp(min=1)
        loss = loss - rpo_alpha * pc.sum() / chosen_tokens
    return loss, metrics
