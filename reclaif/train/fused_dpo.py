"""The DPO loss fused into the log-prob kernel of reclaif/train/logprobs.py (as Liger does).

Chunks hold whole chosen/rejected pairs, so each chunk's DPO loss, and with it the gradient of
its logits, is known inside the chunk: gradients are formed in the forward, where the logits
are at hand, and backward only scales them. No logits are recomputed: the three lm_head matmuls
of the usual path (logits, grad_hidden, grad_weight) and no fourth.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reclaif.train.logprobs import (_acc, _backprop_chunk, _body_and_weight, _chunk_logits,
                                    _final_hidden, _gather_until_accumulated, _gathered,
                                    _GradWeight, _inner_loop, _matmul_grads, _pack,
                                    _softmax_inplace, shifted_labels)
from reclaif.train.losses import dpo_loss_grad, dpo_losses, dpo_metrics


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


def _group_layout(counts: list[int], groups: list[tuple[int, int]],
                  device: torch.device) -> tuple[list[int], Tensor, Tensor, Tensor]:
    """Group order lists the rows group by group, each group's chosen rows then its rejected
    rows, so that group [a, b)'s rows are the slots [2a, 2b). Returns the groups' token bounds
    in that order and three [2B] tensors: each row's slot, its slot within its group, and the
    row at each slot."""
    B = len(counts) // 2
    rank, local, rows, bounds = [0] * (2 * B), [0] * (2 * B), [], [0]
    for a, b in groups:
        for k, r in enumerate((*range(a, b), *range(B + a, B + b))):
            rank[r], local[r] = len(rows), k
            rows.append(r)
        bounds.append(bounds[-1] + sum(counts[r] for r in rows[2 * a:]))
    # one host-to-device copy for all groups
    return bounds, *torch.tensor([rank, local, rows], dtype=torch.long, device=device)


class _FusedDPO(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, labels: Tensor, ref_c: Tensor,
                ref_r: Tensor, opts: dict) -> tuple[Tensor, Tensor]:
        B2, T, H = hidden.shape
        B = B2 // 2
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        beta, loss_type, ls = opts["beta"], opts["loss_type"], opts["label_smoothing"]
        pos, targets, seq = _pack(labels, opts["ignore_index"])
        counts = torch.bincount(seq, minlength=B2)
        counts_h = counts.tolist()  # the forward's one device-to-host sync
        groups = _pair_groups(counts_h, B, opts["chunk"])
        bounds, rank, local, rows = _group_layout(counts_h, groups, hidden.device)
        # Tokens sorted into group order once (stable: a row's tokens keep their order), so
        # that the loop below takes each group's tokens as slices and builds no index.
        order = torch.argsort(rank[seq], stable=True)
        pos, targets, local = pos[order], targets[order], local[seq[order]]
        h2d = hidden.reshape(-1, H)
        grad_h = torch.zeros_like(h2d) if need_h else None
        ipo = loss_type == "ipo"
        lengths = counts.clamp(min=1).to(_acc(hidden))  # IPO's length normalisation
        slot_lengths = lengths[rows]
        sums = torch.zeros(B2, dtype=_acc(hidden), device=hidden.device)  # in group order
        grad_w = _GradWeight(weight, len(groups)) if need_w else None
        ce = opts["ce"]
        for (a, b), t0, t1 in zip(groups, bounds, bounds[1:]):
            p_pos, p_tgt, p_local = pos[t0:t1], targets[t0:t1], local[t0:t1]
            hc = h2d[p_pos]
            if ce is not None:
                p = hc @ weight.T  # stays in its dtype: the kernels read it as it is
                tok, lse = ce.lse_and_target(p, p_tgt)
            else:
                p = _chunk_logits(hc, weight)
                tok, _ = _softmax_inplace(p, p_tgt)
            s = sums[2 * a:2 * b].index_add_(0, p_local, tok)
            if need_h or need_w:
                # Closed-form loss gradient (no autograd call per group); values come after
                # the loop, from dpo_losses for all pairs at once.
                lp = s / slot_lengths[2 * a:2 * b] if ipo else s
                n = b - a
                dh = dpo_loss_grad((lp[:n] - ref_c[a:b]) - (lp[n:] - ref_r[a:b]), beta,
                                   loss_type, ls)
                g = torch.cat([dh, -dh]) / B  # d(mean loss)/d(log-prob) of chosen, rejected
                if ipo:
                    g = g / slot_lengths[2 * a:2 * b]
                g_tok = g[p_local]
                if ce is not None:
                    ce.grad_logits_inplace(p, lse, p_tgt, g_tok)
                    gh = _matmul_grads(p, p, hc, weight, grad_w)
                else:
                    gh = _backprop_chunk(p, g_tok, p_tgt, hc, weight, grad_w)
                if grad_h is not None:
                    grad_h.index_copy_(0, p_pos, gh.to(grad_h.dtype))
            del p
        lp = sums[rank] / lengths if ipo else sums[rank]  # back to row order
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
        factor = grad_loss.item() / ctx.scale  # ctx.scale: the factor the stored grads carry
        first = not ctx.used
        ctx.used = True
        if first:
            ctx.scale = grad_loss.item()
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
                   kernel: str = "auto") -> tuple[Tensor, dict]:
    """DPO loss with the loss fused into the log-prob kernel (gradients formed in the forward).
    chosen/rejected: dicts with input_ids, attention_mask, loss_mask [B,T*] (right padding is
    added to concatenate them into one forward). ref_chosen/ref_rejected: [B] reference
    log-prob SUMS (as model_sequence_logps returns); for ipo both are length-normalised here.
    Returns (mean loss, metrics: loss, rewards/*, logps/chosen, logps/rejected as 0-dim
    detached fp32 tensors). `model`: the HF model or the DeepSpeed engine (see _unwrap).
    kernel: "auto", "torch" or "triton", the inner loop over each chunk (module docstring)."""
    T = max(chosen["input_ids"].shape[1], rejected["input_ids"].shape[1])
    cat = {k: torch.cat([_pad_right(chosen[k], T), _pad_right(rejected[k], T)])
           for k in ("input_ids", "attention_mask", "loss_mask")}
    body, weight = _body_and_weight(model)
    hidden = _final_hidden(body, cat["input_ids"], cat["attention_mask"])
    labels = shifted_labels(cat["input_ids"], cat["attention_mask"], cat["loss_mask"])
    return fused_dpo_loss_from_hidden(hidden, weight, labels, ref_chosen, ref_rejected, beta,
                                      loss_type, label_smoothing, chunk_size, kernel=kernel)


def fused_dpo_loss_from_hidden(hidden: Tensor, weight: Tensor, labels: Tensor, ref_chosen: Tensor,
                               ref_rejected: Tensor, beta: float, loss_type: str = "sigmoid",
                               label_smoothing: float = 0.0, chunk_size: int = 1024,
                               ignore_index: int = -100,
                               kernel: str = "auto") -> tuple[Tensor, dict]:
    """The kernel behind fused_dpo_loss: hidden [2B,T,H] (chosen rows then rejected rows),
    labels [2B,T] shifted as in sequence_logps; ref_* [B] log-prob sums."""
    if hidden.shape[0] % 2 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"fused_dpo_loss: hidden {tuple(hidden.shape)} must be [2B,T,H] with "
                         f"labels [2B,T], got labels {tuple(labels.shape)}")
    ce = _inner_loop(kernel, hidden)
    B = hidden.shape[0] // 2
    acc = _acc(hidden)
    ref_c, ref_r = ref_chosen.to(hidden.device, acc), ref_rejected.to(hidden.device, acc)
    if loss_type == "ipo":
        counts = torch.bincount(_pack(labels, ignore_index)[2], minlength=2 * B).clamp(min=1)
        ref_c, ref_r = ref_c / counts[:B], ref_r / counts[B:]
    opts = dict(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
                chunk=chunk_size, ignore_index=ignore_index, ce=ce)
    with _gathered(weight):  # around apply: see sequence_logps
        loss, stats = _FusedDPO.apply(hidden.contiguous(), weight, labels, ref_c, ref_r, opts)
    metrics = dpo_metrics(stats[:, 0], stats[:, 1], stats[:, 2])
    metrics["logps/chosen"] = stats[:, 3].mean()
    metrics["logps/rejected"] = stats[:, 4].mean()
    return loss, metrics
