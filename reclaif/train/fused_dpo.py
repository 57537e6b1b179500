"""The DPO loss fused into the log-prob kernel of reclaif/train/logprobs.py (as Liger does).

Chunks hold whole chosen/rejected pairs, so each chunk's DPO loss, and with it the gradient of
its logits, is known inside the chunk: gradients are formed in the forward, where the logits
are at hand, and backward only scales them. No logits are recomputed: the three lm_head matmuls
of the usual path (logits, grad_hidden, grad_weight) and no fourth.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reclaif.train.logprobs import (_acc, _backprop_chunk, _body_and_weight, _chunk_logits,
                                    _final_hidden, _gather_until_accumulated, _gathered,
                                    _GradWeight, _inner_loop, _matmul_grads, _softmax_inplace,
                                    check_weight_grad_acc, shifted_labels)
from reclaif.train.losses import check_dpo_args, dpo_loss_grad, dpo_losses, dpo_metrics


def _pair_groups(counts: list[int], pairs: int, chunk: int) -> list[tuple[int, int]]:
    """Consecutive pair ranges [a, b) whose chosen+rejected tokens fit in `chunk` (>= 1 pair)."""
    groups, a, used = [], 0, 0
    for i in range(pairs):
        n = counts[i] + counts[pairs + i]
        if i > a and used + n > chunk:
            groups.append((a, i))
            a, used = i, 0
        used += n
    if pairs:
        groups.append((a, pairs))
    return groups


@dataclass
class _Plan:
    """Where every counted token goes, built on the host from one copy of the label mask.

    Group order lists the rows group by group, each group's chosen rows then its rejected
    rows, so group [a, b)'s rows are the slots [2a, 2b) and its tokens one slice. Planning on
    the host replaces a dozen small device ops (nonzero, bincount, argsort, index builds), each
    a kernel launch; at the bench's sizes the host's launch rate, not the GPU, set the time."""

    groups: list[tuple[int, int]]
    bounds: list[int]  # token bounds of the groups
    pos: Tensor  # [N] flat position of each counted token, in group order
    local: Tensor  # [N] its slot within its group
    pair: Tensor  # [N] its pair within its group
    coef: Tensor  # [N] d(mean loss)/d(its log-prob) per unit of dloss/dh: +-1/B (/count: IPO)
    rank: Tensor  # [2B] slot of each row
    counts: Tensor  # [2B] counted tokens per row
    slot_counts: Tensor  # [2B] counted tokens per slot


def _plan(labels: Tensor, ignore_index: int, chunk: int, ipo: bool, dtype: torch.dtype) -> _Plan:
    B2, T = labels.shape
    B = B2 // 2
    keep = (labels != ignore_index).cpu()  # the forward's one device-to-host copy
    counts = keep.sum(1)
    groups = _pair_groups(counts.tolist(), B, chunk)
    rows, local, pair, sign = [], [], [], []
    for a, b in groups:
        n = b - a
        rows += [*range(a, b), *range(B + a, B + b)]
        local += range(2 * n)
        pair += [*range(n), *range(n)]
        sign += [1.0] * n + [-1.0] * n
    rows_t = torch.tensor(rows, dtype=torch.long)
    slot, t = keep[rows_t].nonzero(as_tuple=True)  # slot by slot, each in position order
    ends = counts[rows_t].cumsum(0).tolist()
    bounds = [0] + [ends[2 * b - 1] for _, b in groups]
    rank = torch.empty(B2, dtype=torch.long)
    rank[rows_t] = torch.arange(B2)
    slot_counts = counts[rows_t]
    coef = torch.tensor(sign, dtype=torch.float64) / max(B, 1)
    if ipo:  # IPO's loss is on length-normalised log-probs
        coef /= slot_counts.clamp(min=1)
    local_t, pair_t = (torch.tensor(x, dtype=torch.long) for x in (local, pair))
    ints = torch.cat([rows_t[slot] * T + t, local_t[slot], pair_t[slot], rank, counts,
                      slot_counts]).to(labels.device)  # one host-to-device copy of the plan
    n_tok = slot.numel()
    pos, local_d, pair_d, rank_d, counts_d, slot_d = ints.split([n_tok] * 3 + [B2] * 3)
    return _Plan(groups, bounds, pos, local_d, pair_d, coef[slot].to(labels.device, dtype),
                 rank_d, counts_d, slot_d)


class _FusedDPO(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, labels: Tensor, ref_c: Tensor,
                ref_r: Tensor, opts: dict) -> tuple[Tensor, Tensor]:
        B2, T, H = hidden.shape
        B = B2 // 2
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        beta, loss_type, ls = opts["beta"], opts["loss_type"], opts["label_smoothing"]
        ipo = loss_type == "ipo"
        acc = _acc(hidden)
        plan = _plan(labels, opts["ignore_index"], opts["chunk"], ipo, acc)
        # The counted tokens' hidden states and targets in group order, gathered once: each
        # group then reads a slice and builds no index.
        hs = hidden.reshape(-1, H)[plan.pos]
        targets = labels.reshape(-1)[plan.pos]
        if ipo:
            lengths = plan.counts.clamp(min=1).to(acc)
            ref_c, ref_r = ref_c / lengths[:B], ref_r / lengths[B:]
            inv_len = 1.0 / plan.slot_counts.clamp(min=1).to(acc)
        ref_diff = ref_c - ref_r
        sums = torch.zeros(B2, dtype=acc, device=hidden.device)  # per slot
        grad_h = torch.zeros_like(hidden).view(-1, H) if need_h else None
        grad_w = _GradWeight(weight, len(plan.groups), opts["acc"]) if need_w else None
        ce = opts["ce"]
        for (a, b), t0, t1 in zip(plan.groups, plan.bounds, plan.bounds[1:]):
            hc, tgt = hs[t0:t1], targets[t0:t1]
            if ce is not None:
                p = hc @ weight.T  # stays in its dtype: the kernels read it as it is
                tok, lse = ce.lse_and_target(p, tgt)
            else:
                p = _chunk_logits(hc, weight)
                tok, _ = _softmax_inplace(p, tgt)
            s = sums[2 * a:2 * b].index_add_(0, plan.local[t0:t1], tok)
            if need_h or need_w:
                # Closed-form loss gradient (no autograd call per group); values come after
                # the loop, from dpo_losses for all pairs at once.
                n = b - a
                if ipo:
                    s = s * inv_len[2 * a:2 * b]
                d = dpo_loss_grad(s[:n] - s[n:] - ref_diff[a:b], beta, loss_type, ls)
                g_tok = d[plan.pair[t0:t1]] * plan.coef[t0:t1]
                if ce is not None:
                    ce.grad_logits_inplace(p, lse, tgt, g_tok)
                    gh = _matmul_grads(p, p, hc, weight, grad_w)
                else:
                    gh = _backprop_chunk(p, g_tok, tgt, hc, weight, grad_w)
                if grad_h is not None:  # written row by row, with no [tokens, H] staging buffer
                    grad_h.index_copy_(0, plan.pos[t0:t1], gh.to(grad_h.dtype))
            del p
        lp = sums[plan.rank]
        if ipo:
            lp = lp / lengths
        losses, r_c, r_r = dpo_losses(lp[:B], lp[B:], ref_c, ref_r, beta, loss_type, ls)
        stats = torch.stack([losses, r_c, r_r, lp[:B], lp[B:]], 1)
        ctx.weight = weight if hasattr(weight, "ds_id") else None
        ctx.scale, ctx.used = 1.0, False
        ctx.grads = (grad_h.view_as(hidden) if grad_h is not None else None,
                     grad_w.result() if grad_w is not None else None)
        ctx.mark_non_differentiable(stats)
        return stats[:, 0].sum() / B, stats

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, _grad_stats: Tensor) -> tuple[Tensor | None, ...]:
        grad_h, grad_w = ctx.grads  # kept: backward may run again with retain_graph
        if grad_w is not None:
            _gather_until_accumulated(ctx.weight)
        # Gradients were formed in the forward. Under ZeRO-3 the weight is gathered again only
        # so that AccumulateGrad sees it full-shape (see _gather_until_accumulated).
        # The first backward scales in place (a loss scaled by 1/grad_accum would otherwise
        # copy the [V,H] weight gradient); a retain_graph re-run gets fresh tensors, since the
        # first ones now belong to the caller.
        scale = grad_loss.item()  # the backward's one device sync
        factor = scale / ctx.scale  # ctx.scale: the factor the stored grads carry
        first = not ctx.used
        ctx.used = True
        if first:
            ctx.scale = scale
        out = []
        for g in (grad_h, grad_w):
            if g is not None and factor != 1.0:
                g = g.mul_(factor) if first else g * factor
            elif g is not None and not first:
                g = g.clone()
            out.append(g)
        if first:
            ctx.grads = tuple(out)
        return out[0], out[1], None, None, None, None


def _pad_right(t: Tensor, length: int, value: int = 0) -> Tensor:
    if t.shape[1] == length:
        return t
    return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value)


def fused_dpo_loss(model: torch.nn.Module, chosen: dict, rejected: dict, ref_chosen: Tensor,
                   ref_rejected: Tensor, beta: float, loss_type: str = "sigmoid",
                   label_smoothing: float = 0.0, chunk_size: int = 1024,
                   kernel: str = "auto", weight_grad_acc: str = "fp32") -> tuple[Tensor, dict]:
    """DPO loss with the loss fused into the log-prob kernel (gradients formed in the forward).
    chosen/rejected: dicts with input_ids, attention_mask, loss_mask [B,T*] (right padding is
    added to concatenate them into one forward). ref_chosen/ref_rejected: [B] reference
    log-prob SUMS (as model_sequence_logps returns); for ipo both are length-normalised here.
    Returns (mean loss, metrics: loss, rewards/*, logps/chosen, logps/rejected as 0-dim
    detached fp32 tensors). `model`: the HF model or the DeepSpeed engine (see _unwrap).
    kernel: "auto", "torch" or "triton", the inner loop over each chunk (module docstring);
    weight_grad_acc: "fp32" or "param" (see reclaif.train.logprobs._GradWeight)."""
    T = max(chosen["input_ids"].shape[1], rejected["input_ids"].shape[1])
    cat = {k: torch.cat([_pad_right(chosen[k], T), _pad_right(rejected[k], T)])
           for k in ("input_ids", "attention_mask", "loss_mask")}
    body, weight = _body_and_weight(model)
    hidden = _final_hidden(body, cat["input_ids"], cat["attention_mask"])
    labels = shifted_labels(cat["input_ids"], cat["attention_mask"], cat["loss_mask"])
    return fused_dpo_loss_from_hidden(hidden, weight, labels, ref_chosen, ref_rejected, beta,
                                      loss_type, label_smoothing, chunk_size, kernel=kernel,
                                      weight_grad_acc=weight_grad_acc)


def fused_dpo_loss_from_hidden(hidden: Tensor, weight: Tensor, labels: Tensor, ref_chosen: Tensor,
                               ref_rejected: Tensor, beta: float, loss_type: str = "sigmoid",
                               label_smoothing: float = 0.0, chunk_size: int = 1024,
                               ignore_index: int = -100, kernel: str = "auto",
                               weight_grad_acc: str = "fp32") -> tuple[Tensor, dict]:
    """The kernel behind fused_dpo_loss: hidden [2B,T,H] (chosen rows then rejected rows),
    labels [2B,T] shifted as in sequence_logps; ref_* [B] log-prob sums."""
    if hidden.shape[0] % 2 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"fused_dpo_loss: hidden {tuple(hidden.shape)} must be [2B,T,H] with "
                         f"labels [2B,T], got labels {tuple(labels.shape)}")
    check_dpo_args(beta, loss_type, label_smoothing)
    check_weight_grad_acc("fused_dpo_loss", weight_grad_acc)
    ce = _inner_loop(kernel, hidden)
    acc = _acc(hidden)
    ref_c, ref_r = ref_chosen.to(hidden.device, acc), ref_rejected.to(hidden.device, acc)
    opts = dict(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
                chunk=chunk_size, ignore_index=ignore_index, ce=ce, acc=weight_grad_acc)
    with _gathered(weight):  # around apply: see sequence_logps
        loss, stats = _FusedDPO.apply(hidden.contiguous(), weight, labels, ref_c, ref_r, opts)
    metrics = dpo_metrics(stats[:, 0], stats[:, 1], stats[:, 2])
    metrics["logps/chosen"] = stats[:, 3].mean()
    metrics["logps/rejected"] = stats[:, 4].mean()
    return loss, metrics
