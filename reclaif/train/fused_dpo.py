"""The DPO loss fused into the log-prob kernel of reclaif/train/logprobs.py (as Liger does).

Chunks hold whole chosen/rejected pairs, so each chunk's DPO loss, and with it the gradient of
its logits, is known inside the chunk: gradients are formed in the forward, where the logits
are at hand, and backward only scales them. No logits are recomputed: the three lm_head matmuls
of the usual path (logits, grad_hidden, grad_weight) and no fourth.

On a GPU at a few thousand tokens the step is bound by how fast the host launches kernels, not
by the GPU (an H200 timeline: 2.3 ms of GPU work behind 70 launches took longer than the usual
path's 2.9 ms). Hence the token layout is planned on the host (numpy, no device sync when the
labels come from the host) and the Triton loop spends three launches per group besides the
GEMMs (reclaif/train/triton_ce.py); the torch loop, the reference, runs a dozen small ops.

The kernel reads hidden states at counted label positions only, so where the pair's body runs
does not matter to it: pair_hidden either runs prompt+chosen and prompt+rejected as two rows,
or (shared_prompt) each pair as one row [prompt | chosen | rejected] under a 4D mask, where the
prompt (most of a recommendation pair's tokens) runs once, and hands it the answers' positions;
there the head every pair's prompt begins with runs once for the micro-batch (shared_head.py).

Public face: `fused_dpo_loss` (the trainer's), `fused_dpo_loss_from_hidden` (the kernel on
given hidden states: the benches, the tests), `pair_hidden` (also the reference log-probs'
forward), `shared_prompt_mask`, `to_device_async` and `pair_groups` (how pairs fill chunks).
Underscored names stay here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reclaif.train.data import PROMPT, share_prompt
from reclaif.train.logprobs import (GradWeight, acc_dtype, backprop_chunk, body_and_weight,
                                    check_weight_grad_acc, chunk_logits, final_hidden,
                                    gather_until_accumulated, gathered, inner_loop, matmul_grads,
                                    shifted_labels, softmax_inplace, under_autocast,
                                    zero3_partitioned)
from reclaif.train.losses import check_dpo_args, dpo_loss_grad, dpo_losses, dpo_metrics
from reclaif.train.shared_head import batch_head, head_support, run_over_head


def pair_groups(counts: list[int], pairs: int, chunk: int) -> list[tuple[int, int]]:
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
    """Where every counted token goes, built on the host from the labels.

    Slot order lists the rows group by group, each group's chosen rows then its rejected rows,
    so group [a, b)'s rows are the slots [2a, 2b) and its tokens one slice. Planning on the
    host replaces a dozen small device ops (nonzero, bincount, argsort, index builds), each a
    kernel launch; at the bench's sizes the host's launch rate, not the GPU, set the time.
    Labels given on the host (as the collator makes them) cost no device sync at all: the plan
    then reaches the GPU in one non-blocking copy and the host runs ahead of the GPU."""

    groups: list[tuple[int, int]]
    bounds: list[int]  # token bounds of the groups
    pos: Tensor  # [N] flat position of each counted token, in slot order
    targets: Tensor  # [N] its target token
    slot: Tensor  # [N] its slot
    coef: Tensor  # [2B] d(mean loss)/d(slot's log-prob) per unit of dloss/dh: +-1/B (/count: IPO)
    rank: Tensor  # [2B] slot of each row
    counts: Tensor  # [2B] counted tokens per row
    slot_counts: Tensor  # [2B] counted tokens per slot


def to_device_async(t: Tensor, device: torch.device) -> Tensor:
    """A host tensor on `device` without waiting for the GPU: a blocking (or pageable) host-to-
    device copy synchronises the stream, and the GPU then idles while the host launches the
    next kernels. Pinned memory lets the copy queue behind the work already launched."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _plan(labels: Tensor, ignore_index: int, chunk: int, ipo: bool, dtype: torch.dtype,
          device: torch.device) -> _Plan:
    # numpy, not torch: each op on a few thousand host integers costs ~1 us there and 5-30 us
    # as a torch CPU op, and this runs before the step's first GEMM, with the GPU idle.
    B2, T = labels.shape
    B = B2 // 2
    flat = labels.cpu().numpy().reshape(-1)  # a device sync only if the labels are on the GPU
    keep = (flat != ignore_index).reshape(B2, T)
    counts = keep.sum(1)
    groups = pair_groups(counts.tolist(), B, chunk)
    rows, sign = [], []
    for a, b in groups:
        rows += [*range(a, b), *range(B + a, B + b)]
        sign += [1.0] * (b - a) + [-1.0] * (b - a)
    rows_a = np.array(rows, dtype=np.int64)
    slot_counts = counts[rows_a]
    # positions slot by slot, each slot's in order
    pos = ((rows_a * T)[:, None] + np.arange(T))[keep[rows_a]]
    slot = np.repeat(np.arange(B2), slot_counts)
    ends = slot_counts.cumsum().tolist()
    bounds = [0] + [ends[2 * b - 1] for _, b in groups]
    rank = np.empty(B2, dtype=np.int64)
    rank[rows_a] = np.arange(B2)
    coef = np.array(sign) / max(B, 1)
    if ipo:  # IPO's loss is on length-normalised log-probs
        coef /= np.maximum(slot_counts, 1)
    # One host-to-device copy of the whole plan; the float coefficients ride as int64 bits.
    ints = np.concatenate([pos, flat[pos], slot, coef.view(np.int64), rank, counts, slot_counts])
    ints = to_device_async(torch.from_numpy(ints), device)
    pos, tgt, slot_d, coef_d, rank_d, counts_d, slot_cd = ints.split([slot.size] * 3 + [B2] * 4)
    return _Plan(groups, bounds, pos, tgt, slot_d, coef_d.view(torch.float64).to(dtype), rank_d,
                 counts_d, slot_cd)


class _FusedDPO(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, labels: Tensor, ref_c: Tensor,
                ref_r: Tensor, opts: dict) -> tuple[Tensor, Tensor]:
        B2, T, H = hidden.shape
        B = B2 // 2
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        beta, loss_type, ls = opts["beta"], opts["loss_type"], opts["label_smoothing"]
        ipo = loss_type == "ipo"
        acc = acc_dtype(hidden)
        plan = _plan(labels, opts["ignore_index"], opts["chunk"], ipo, acc, hidden.device)
        # The counted tokens' hidden states in slot order, gathered once: each group then
        # reads a slice and builds no index.
        hs = hidden.reshape(-1, H)[plan.pos]
        targets = plan.targets
        if ipo:
            lengths = plan.counts.clamp(min=1).to(acc)
            ref_c, ref_r = ref_c / lengths[:B], ref_r / lengths[B:]
            inv_len = 1.0 / plan.slot_counts.clamp(min=1).to(acc)
        sums = torch.zeros(B2, dtype=acc, device=hidden.device)  # per slot
        g_slot = torch.empty_like(sums)  # dloss/d(slot's log-prob)
        grad_h = torch.zeros_like(hidden).view(-1, H) if need_h else None
        grad_w = GradWeight(weight, len(plan.groups), opts["acc"]) if need_w else None
        ce = opts["ce"]
        # RPO's NLL term, rpo * -sum(chosen log-probs) / chosen tokens (TRL's "sft" loss: a
        # mean over the micro-batch's chosen tokens), adds one constant to every chosen slot's
        # gradient; rejected slots get nothing.
        rpo = opts["rpo"]
        if rpo:
            nll_g = plan.counts[:B].sum().clamp(min=1).to(acc).reciprocal().mul_(-rpo)
        if ce is not None:  # the Triton loop writes each group's stats as it goes
            stats = torch.empty(B, 5, dtype=acc, device=hidden.device)
        else:
            ref_diff = ref_c - ref_r
        for (a, b), t0, t1 in zip(plan.groups, plan.bounds, plan.bounds[1:]):
            hc, tgt, slots = hs[t0:t1], targets[t0:t1], plan.slot[t0:t1]
            if ce is not None:  # 3 launches besides the GEMMs (see triton_ce)
                p = hc @ weight.T  # stays in its dtype: the kernels read it as it is
                _, lse = ce.lse_and_target(p, tgt, slots=slots, sums=sums)
                ce.dpo_pairs(sums, inv_len if ipo else None, ref_c, ref_r, plan.coef, a, b,
                             beta, loss_type, ls, g_slot, stats)
                if rpo:
                    g_slot[2 * a:a + b].add_(nll_g)
                if need_h or need_w:
                    ce.grad_logits_inplace(p, lse, tgt, g_slot, slots=slots)
                    gh = matmul_grads(p, p, hc, weight, grad_w)
            else:
                p = chunk_logits(hc, weight)
                tok, _ = softmax_inplace(p, tgt)
                sums.index_add_(0, slots, tok)
                if need_h or need_w:
                    # Closed-form loss gradient (no autograd call per group); values come
                    # after the loop, from dpo_losses for all pairs at once.
                    n = b - a
                    s = sums[2 * a:2 * b] * inv_len[2 * a:2 * b] if ipo else sums[2 * a:2 * b]
                    d = dpo_loss_grad(s[:n] - s[n:] - ref_diff[a:b], beta, loss_type, ls)
                    torch.mul(plan.coef[2 * a:2 * b].view(2, n), d,
                              out=g_slot[2 * a:2 * b].view(2, n))
                    if rpo:
                        g_slot[2 * a:a + b].add_(nll_g)
                    gh = backprop_chunk(p, g_slot[slots], tgt, hc, weight, grad_w)
            if grad_h is not None:  # written row by row, with no [tokens, H] staging buffer
                grad_h.index_copy_(0, plan.pos[t0:t1], gh.to(grad_h.dtype))
            del p
        if ce is None:
            lp = sums[plan.rank]
            if ipo:
                lp = lp / lengths
            losses, r_c, r_r = dpo_losses(lp[:B], lp[B:], ref_c, ref_r, beta, loss_type, ls)
            stats = torch.stack([losses, r_c, r_r, lp[:B], lp[B:]], 1)
        ctx.weight = weight if zero3_partitioned(weight) else None
        ctx.scale, ctx.used = 1.0, False
        ctx.grads = (grad_h.view_as(hidden) if grad_h is not None else None,
                     grad_w.result() if grad_w is not None else None)
        ctx.mark_non_differentiable(stats)
        loss = stats[:, 0].sum() / B
        if rpo:  # raw sums (IPO's normalised log-probs are for its own term only)
            loss = loss + nll_g * sums[plan.rank[:B]].sum()
        return loss, stats

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, _grad_stats: Tensor) -> tuple[Tensor | None, ...]:
        grad_h, grad_w = ctx.grads  # kept: backward may run again with retain_graph
        if grad_w is not None:
            gather_until_accumulated(ctx.weight)
        # Gradients were formed in the forward. Under ZeRO-3 the weight is gathered again only
        # so that AccumulateGrad sees it full-shape (see gather_until_accumulated).
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


def shared_prompt_mask(segment: Tensor, dtype: torch.dtype) -> Tensor:
    """The additive attention mask [B,1,L,L] of share_prompt's rows: causal, and a key outside
    the prompt is seen only from its own segment, so the rejected answer attends to the prompt
    and to itself, never to the chosen one. Padding sees padding (and the prompt): no query
    row is fully masked, so softmax never divides 0 by 0."""
    L = segment.shape[1]
    q, k = segment[:, :, None], segment[:, None, :]
    causal = torch.ones(L, L, dtype=torch.bool, device=segment.device).tril_()
    seen = causal & ((k == PROMPT) | (k == q))
    mask = torch.zeros(seen.shape, dtype=dtype, device=segment.device)
    return mask.masked_fill_(~seen, torch.finfo(dtype).min)[:, None]


def pair_hidden(model: torch.nn.Module, chosen: dict, rejected: dict, shared_prompt: bool = False,
                device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Final hidden states of a batch of pairs, chosen rows then rejected rows: (hidden
    [2B,T,H], labels [2B,T] shifted as in sequence_logps, the lm_head weight). Separate: the
    two batches concatenated (right padding added), one body forward of 2B rows. Shared
    (shared_prompt=True; eager or sdpa attention, which take a 4D mask as it is): one row per
    pair, [prompt | chosen | rejected] (data.share_prompt), with shared_prompt_mask and both
    answers' positions continuing from the prompt, so the prompt runs once; hidden is then the
    answers' predictor positions only, [2B, W, H]; and the tokens all the pairs' prompts begin
    with (the template's head) run once for all of them, where shared_head.head_support allows
    (no gradient checkpointing, a plain full-attention cache). Both count the same tokens with
    the same math; they differ by the order of fp sums. The inputs go to `device` (default: the lm_head
    weight's) in non-blocking copies; labels stay on the host."""
    body, weight = body_and_weight(model)
    dev = device or weight.device
    if shared_prompt:
        # The pairs' common head (the prompts' instructions) once for all the micro-batch's
        # pairs, where the model can (shared_head.head_support); their rows go on after it.
        head = batch_head(chosen) if head_support(model) is None else 0
        head_ids = chosen["input_ids"][:1, :head]
        if head:
            chosen, rejected = ({k: x[k][:, head:] for k in ("input_ids", "attention_mask",
                                                             "loss_mask")}
                                for x in (chosen, rejected))
        rows = share_prompt(chosen, rejected)
        dtype = body.get_input_embeddings().weight.dtype  # as HF's own eager masks
        mask = shared_prompt_mask(to_device_async(rows["segment"], dev), dtype)
        ids, positions = (to_device_async(rows[k], dev) for k in ("input_ids", "position_ids"))
        if head:  # every row sees the whole head
            mask = torch.cat([mask.new_zeros(*mask.shape[:3], head), mask], dim=-1)
            hidden = run_over_head(body, to_device_async(head_ids, dev), ids, mask,
                                   positions + head)
        else:
            hidden = final_hidden(body, ids, mask, positions)
        flat = hidden.flatten(0, 1)
        index = to_device_async(rows["gather"], dev)
        return flat[index.flatten()].view(*index.shape, -1), rows["labels"], weight
    T = max(chosen["input_ids"].shape[1], rejected["input_ids"].shape[1])
    cat = {k: torch.cat([_pad_right(chosen[k], T), _pad_right(rejected[k], T)])
           for k in ("input_ids", "attention_mask", "loss_mask")}
    hidden = final_hidden(body, to_device_async(cat["input_ids"], dev),
                           to_device_async(cat["attention_mask"], dev))
    return hidden, shifted_labels(cat["input_ids"], cat["attention_mask"], cat["loss_mask"]), weight


def fused_dpo_loss(model: torch.nn.Module, chosen: dict, rejected: dict, ref_chosen: Tensor,
                   ref_rejected: Tensor, beta: float, loss_type: str = "sigmoid",
                   label_smoothing: float = 0.0, chunk_size: int = 1024,
                   kernel: str = "auto", weight_grad_acc: str = "fp32",
                   device: torch.device | None = None,
                   shared_prompt: bool = False, rpo_alpha: float = 0.0) -> tuple[Tensor, dict]:
    """DPO loss with the loss fused into the log-prob kernel (gradients formed in the forward).
    chosen/rejected: dicts with input_ids, attention_mask, loss_mask [B,T*] (collate_pairs);
    shared_prompt: one forward of each pair's prompt for both answers (see pair_hidden; the
    two must start with the same prompt tokens, as encode_pair makes them).
    ref_chosen/ref_rejected: [B] reference log-prob SUMS (as model_sequence_logps returns);
    for ipo both are length-normalised here.
    Returns (mean loss, metrics: loss, rewards/*, logps/chosen, logps/rejected as 0-dim
    detached fp32 tensors). `model`: the HF model or the DeepSpeed engine (see _unwrap).
    The batch may stay on the host, as the collator made it: the inputs then go to `device`
    (where the model computes; default: its lm_head weight's) in non-blocking copies and the
    token plan is made from the host's labels, so the step launches all its GPU work without
    once waiting for the GPU (see _Plan).
    kernel: "auto", "torch" or "triton", the inner loop over each chunk (module docstring);
    weight_grad_acc: "fp32" or "param" (see reclaif.train.logprobs.GradWeight);
    rpo_alpha: weight of RPO's NLL term on the chosen answers (0 = plain DPO; DPOConfig)."""
    hidden, labels, weight = pair_hidden(model, chosen, rejected, shared_prompt, device)
    return fused_dpo_loss_from_hidden(hidden, weight, labels, ref_chosen, ref_rejected, beta,
                                      loss_type, label_smoothing, chunk_size, kernel=kernel,
                                      weight_grad_acc=weight_grad_acc, rpo_alpha=rpo_alpha)


def fused_dpo_loss_from_hidden(hidden: Tensor, weight: Tensor, labels: Tensor, ref_chosen: Tensor,
                               ref_rejected: Tensor, beta: float, loss_type: str = "sigmoid",
                               label_smoothing: float = 0.0, chunk_size: int = 1024,
                               ignore_index: int = -100, kernel: str = "auto",
                               weight_grad_acc: str = "fp32",
                               rpo_alpha: float = 0.0) -> tuple[Tensor, dict]:
    """The kernel behind fused_dpo_loss: hidden [2B,T,H] (chosen rows then rejected rows),
    labels [2B,T] shifted as in sequence_logps; ref_* [B] log-prob sums. Labels and refs may be
    on the host (no device sync then: see _Plan) or on hidden's device."""
    if hidden.shape[0] % 2 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"fused_dpo_loss: hidden {tuple(hidden.shape)} must be [2B,T,H] with "
                         f"labels [2B,T], got labels {tuple(labels.shape)}")
    check_dpo_args(beta, loss_type, label_smoothing)
    check_weight_grad_acc("fused_dpo_loss", weight_grad_acc)
    if not rpo_alpha >= 0:
        raise ValueError(f"fused_dpo_loss: rpo_alpha {rpo_alpha} must be >= 0")
    acc = acc_dtype(hidden)
    ref_c, ref_r = (to_device_async(r.to(acc), hidden.device) for r in (ref_chosen, ref_rejected))
    with gathered(weight):  # around apply: see sequence_logps
        h, w, plain = under_autocast(hidden, weight)  # the reference's dtypes, exactly
        opts = dict(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
                    chunk=chunk_size, ignore_index=ignore_index, ce=inner_loop(kernel, h),
                    acc=weight_grad_acc, rpo=float(rpo_alpha))
        with plain:
            loss, stats = _FusedDPO.apply(h.contiguous(), w, labels, ref_c, ref_r, opts)
    metrics = dpo_metrics(stats[:, 0], stats[:, 1], stats[:, 2])
    metrics["logps/chosen"] = stats[:, 3].mean()
    metrics["logps/rejected"] = stats[:, 4].mean()
    return loss, metrics
