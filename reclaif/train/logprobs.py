"""Sequence log-probs from final hidden states and the lm_head weight, without [tokens, vocab]
logits.

The usual path (logits = h @ W.T, log_softmax, gather) holds several [tokens, vocab] fp32
buffers at once; at vocab 49k they dwarf the model. Here only the tokens that count are
visited, a chunk at a time, in ONE reused [chunk, vocab] buffer (max, exp and softmax are done
in place), with log-sum-exp and sums in fp32. Backward recomputes each chunk's logits (one
extra matmul) and writes grad_hidden and accumulates grad_weight in an fp32 accumulator.

`fused_dpo_loss` goes one step further (as Liger does): chunks hold whole chosen/rejected
pairs, so each chunk's DPO loss and its gradient are known inside the chunk; gradients are
formed in the forward and backward only scales them - no recompute at all.

ZeRO-3: the lm_head weight is partitioned (an empty tensor) whenever its module is not running;
a kernel that bypasses the module's forward must gather it itself (TRL issue 4544). Forward:
gathered around Function.apply (autograd records the input's shape there). Backward: gathered
again and kept whole until autograd has accumulated its full-shape gradient (DeepSpeed's
reduce-scatter hook takes it there), then partitioned. With gradient accumulation pass the
DeepSpeed ENGINE as `model` (see _unwrap). tests/test_logprobs_zero3.py proves the gradients
equal a single-process run.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from reclaif.train.losses import dpo_losses, dpo_metrics


def _gathered(weight: Tensor) -> contextlib.AbstractContextManager:
    """Gathers a ZeRO-3 partitioned parameter for the duration of the block (no-op otherwise)."""
    if hasattr(weight, "ds_id"):
        import deepspeed

        return deepspeed.zero.GatheredParameters([weight], modifier_rank=None)
    return contextlib.nullcontext()


def _gather_until_accumulated(weight: Tensor) -> None:
    """ZeRO-3 backward: gathers the parameter and keeps it whole until autograd has accumulated
    its gradient, then partitions it again. AccumulateGrad copies a gradient into the shape the
    parameter has at that moment, so releasing it inside our backward (as GatheredParameters'
    exit would) fails with a [0]-shaped parameter. DeepSpeed's own reduce hook was registered
    first, so it runs before this release."""
    if not hasattr(weight, "ds_id"):
        return
    weight.all_gather(param_list=[weight])

    def release(param: Tensor) -> None:
        handle.remove()
        # A tied weight still held by the embedding module is released by that module's hook.
        if not param.ds_active_sub_modules:
            param.partition(param_list=[param], has_been_updated=False)

    handle = weight.register_post_accumulate_grad_hook(release)


def _pack(labels: Tensor, ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
    """Flat positions of the tokens that count, their targets and their sequence index."""
    flat = labels.reshape(-1)
    pos = (flat != ignore_index).nonzero().squeeze(1)
    return pos, flat[pos], torch.div(pos, labels.shape[1], rounding_mode="floor")


def _chunks(n: int, size: int) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(s + size, n))


def _softmax_inplace(logits: Tensor, targets: Tensor, normalize: bool = True) -> tuple[Tensor, Tensor]:
    """logits [n, V] fp32 becomes softmax(logits) in place (exp(logits - max) when not
    normalize: the caller only wants the values); returns (target log-prob, lse)."""
    tgt = logits.gather(1, targets[:, None]).squeeze(1)
    m = logits.amax(1, keepdim=True)
    logits.sub_(m).exp_()
    s = logits.sum(1, keepdim=True)
    if normalize:
        logits.div_(s)
    lse = (m + s.log()).squeeze(1)
    return tgt - lse, lse


def _acc(t: Tensor) -> torch.dtype:
    """Accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)."""
    return torch.promote_types(t.dtype, torch.float32)


def _chunk_logits(h: Tensor, weight: Tensor) -> Tensor:
    out = h @ weight.T
    return out.to(_acc(out))


def _backprop_chunk(p: Tensor, g: Tensor, targets: Tensor, h: Tensor, weight: Tensor,
                    grad_weight: Tensor | None) -> Tensor:
    """p [n, V] softmax (overwritten by grad_logits = g * (onehot - p)); returns grad_h [n, H]
    and adds grad_logits.T @ h into the fp32 grad_weight accumulator."""
    p.mul_(-g[:, None])
    p.scatter_add_(1, targets[:, None], g[:, None])
    low = p.to(weight.dtype) if weight.dtype != p.dtype else p
    if grad_weight is not None:
        if h.is_cuda and h.dtype != grad_weight.dtype:
            # bf16/fp16 on a GPU: a tensor-core GEMM that adds into the fp32 accumulator in
            # place (cuBLAS with an fp32 C). An fp32 GEMM here was 4-9x slower than the whole
            # usual path on an H200, and `acc += low.T @ h` holds a [V, H] temporary.
            try:
                torch.ops.aten.addmm.dtype_out(grad_weight, low.T, h, grad_weight.dtype,
                                               out=grad_weight)
            except (RuntimeError, NotImplementedError):  # torch builds without the overload
                grad_weight.add_(low.T @ h)
        else:
            grad_weight.addmm_(p.T, h.to(grad_weight.dtype))
    return low @ weight


def _token_logps(h2d: Tensor, weight: Tensor, pos: Tensor, targets: Tensor,
                 chunk: int) -> tuple[Tensor, Tensor]:
    n = pos.numel()
    tok = torch.empty(n, dtype=_acc(h2d), device=h2d.device)
    lse = torch.empty(n, dtype=_acc(h2d), device=h2d.device)
    for c in _chunks(n, chunk):
        logits = _chunk_logits(h2d[pos[c]], weight)
        tok[c], lse[c] = _softmax_inplace(logits, targets[c], normalize=False)
        del logits
    return tok, lse


class _SequenceLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, pos: Tensor, targets: Tensor,
                seq: Tensor, batch: int, chunk: int) -> Tensor:
        tok, lse = _token_logps(hidden.reshape(-1, hidden.shape[-1]), weight, pos, targets, chunk)
        # A ZeRO-3 parameter is kept as the object itself: an unpacked saved tensor would lose
        # the ds_* attributes needed to gather it again in backward.
        zero3 = hasattr(weight, "ds_id")
        ctx.zero3_weight = weight if zero3 else None
        ctx.save_for_backward(hidden, None if zero3 else weight, pos, targets, seq, lse)
        ctx.chunk = chunk
        return torch.zeros(batch, dtype=tok.dtype, device=hidden.device).index_add_(0, seq, tok)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, pos, targets, seq, lse = ctx.saved_tensors
        if weight is None:
            weight = ctx.zero3_weight
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        H = hidden.shape[-1]
        h2d = hidden.reshape(-1, H)
        grad_h = torch.zeros_like(h2d) if need_h else None
        g_tok = grad_out.to(_acc(hidden))[seq]
        if need_w:
            _gather_until_accumulated(weight)
        with _gathered(weight) if not need_w else contextlib.nullcontext():
            grad_w = (torch.zeros(weight.shape, dtype=_acc(weight), device=weight.device)
                      if need_w else None)
            for c in _chunks(pos.numel(), ctx.chunk):
                hc = h2d[pos[c]]
                logits = _chunk_logits(hc, weight)
                # softmax from the saved lse: exp(logits - lse), in place.
                p = logits.sub_(lse[c][:, None]).exp_()
                gh = _backprop_chunk(p, g_tok[c], targets[c], hc, weight, grad_w)
                del logits, p
                if grad_h is not None:
                    grad_h.index_copy_(0, pos[c], gh.to(grad_h.dtype))
        return (grad_h.view_as(hidden) if grad_h is not None else None,
                grad_w.to(weight.dtype) if grad_w is not None else None,
                None, None, None, None, None)


def sequence_logps(hidden: Tensor, weight: Tensor, labels: Tensor, chunk_size: int = 1024,
                   ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """hidden [B,T,H] final hidden states; weight [V,H] lm_head weight; labels [B,T] where
    labels[b,t] is the token predicted FROM hidden[b,t] (already shifted) or ignore_index.
    Returns (sum of token log-probs per sequence [B] fp32, token counts [B] int64).
    Differentiable w.r.t. hidden and weight; under torch.no_grad nothing is kept."""
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"sequence_logps: hidden {tuple(hidden.shape)} must be [B,T,H] and "
                         f"labels {tuple(labels.shape)} [B,T]")
    if chunk_size < 1:
        raise ValueError(f"sequence_logps: chunk_size must be >= 1, got {chunk_size}")
    B = hidden.shape[0]
    pos, targets, seq = _pack(labels, ignore_index)
    counts = torch.bincount(seq, minlength=B)
    hidden = hidden.contiguous()
    grad_needed = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if not grad_needed:
        with torch.no_grad(), _gathered(weight):
            tok, _ = _token_logps(hidden.reshape(-1, hidden.shape[-1]), weight, pos, targets,
                                  chunk_size)
        return torch.zeros(B, dtype=tok.dtype, device=hidden.device).index_add_(0, seq, tok), counts
    # Gathered around apply, not inside forward: autograd records the weight's shape at apply
    # time and rejects a full-shape gradient for a shape-[0] (partitioned) input.
    with _gathered(weight):
        return _SequenceLogps.apply(hidden, weight, pos, targets, seq, B, chunk_size), counts


def shifted_labels(input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor,
                   ignore_index: int = -100) -> Tensor:
    """labels[b,t] = input_ids[b,t+1] where that token counts, else ignore_index; the last
    column is always ignored, so hidden need not be sliced (no copy)."""
    keep = loss_mask[:, 1:].bool() & attention_mask[:, 1:].bool()
    nxt = input_ids[:, 1:].masked_fill(~keep, ignore_index)
    pad = torch.full_like(input_ids[:, :1], ignore_index)
    return torch.cat([nxt, pad], dim=1)


def _unwrap(model: Any) -> torch.nn.Module:
    """A DeepSpeed engine → its module, telling ZeRO a new micro-step starts. DeepSpeed counts
    micro-steps in engine.forward, which a body-only forward bypasses; without this, ZeRO-3
    with gradient accumulation overwrites (not adds) the earlier micro-batches' gradients."""
    if type(model).__name__ == "DeepSpeedEngine" or (hasattr(model, "module")
                                                      and hasattr(model, "zero_optimization")):
        flag = getattr(model.optimizer, "clear_backward_seen_flag", None)
        if flag is not None:
            flag()
        return model.module
    return model


def _body_and_weight(model: torch.nn.Module) -> tuple[torch.nn.Module, Tensor]:
    model = _unwrap(model)
    cfg = getattr(model, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(cfg, attr, None) not in (None, 1.0):
            raise ValueError(f"fused log-probs support a plain linear lm_head; this model's "
                             f"config sets {attr}={getattr(cfg, attr)}")
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise ValueError("fused log-probs need an lm_head Linear without bias")
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None or body is model:
        body = getattr(model, model.base_model_prefix)
    return body, head.weight


def _final_hidden(body: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    out = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def model_sequence_logps(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor,
                         loss_mask: Tensor, chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Runs the HF causal LM's body to final hidden states; hidden[:, t] predicts
    input_ids[:, t+1], counted where loss_mask[:, t+1] (and attention_mask). Returns
    (log-prob sums [B] fp32, token counts [B]). Works with tied or untied lm_head and under
    ZeRO-3 (the weight is gathered inside the kernel). `model` is the HF model or, under
    DeepSpeed, the ENGINE (needed for correct gradient accumulation, see _unwrap)."""
    body, weight = _body_and_weight(model)
    hidden = _final_hidden(body, input_ids, attention_mask)
    labels = shifted_labels(input_ids, attention_mask, loss_mask)
    return sequence_logps(hidden, weight, labels, chunk_size)


# --- DPO loss fused into the kernel -----------------------------------------------------


def _pair_groups(counts: Tensor, pairs: int, chunk: int) -> list[tuple[int, int]]:
    """Consecutive pair ranges [a, b) whose chosen+rejected tokens fit in `chunk` (>= 1 pair)."""
    per_pair = (counts[:pairs] + counts[pairs:]).tolist()
    groups, a, used = [], 0, 0
    for i, n in enumerate(per_pair):
        if i > a and used + n > chunk:
            groups.append((a, i))
            a, used = i, 0
        used += n
    if pairs:
        groups.append((a, pairs))
    return groups


class _FusedDPO(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, labels: Tensor, ref_c: Tensor,
                ref_r: Tensor, opts: dict) -> tuple[Tensor, Tensor]:
        B2, T, H = hidden.shape
        B = B2 // 2
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        pos, targets, seq = _pack(labels, opts["ignore_index"])
        counts = torch.bincount(seq, minlength=B2)
        offs = [0] + torch.cumsum(counts, 0).tolist()
        h2d = hidden.reshape(-1, H)
        grad_h = torch.zeros_like(h2d) if need_h else None
        stats = torch.zeros(B, 5, dtype=_acc(hidden), device=hidden.device)
        ipo = opts["loss_type"] == "ipo"
        grad_w = (torch.zeros(weight.shape, dtype=_acc(weight), device=weight.device)
                  if need_w else None)
        for a, b in _pair_groups(counts, B, opts["chunk"]):
            idx = torch.cat([torch.arange(offs[a], offs[b], device=pos.device),
                             torch.arange(offs[B + a], offs[B + b], device=pos.device)])
            p_pos, p_tgt = pos[idx], targets[idx]
            # local row: 0..n-1 chosen, n..2n-1 rejected
            row = seq[idx]
            local = torch.where(row < B, row - a, row - B - a + (b - a))
            hc = h2d[p_pos]
            p = _chunk_logits(hc, weight)
            tok, _ = _softmax_inplace(p, p_tgt)
            sums = torch.zeros(2 * (b - a), dtype=tok.dtype, device=hidden.device)
            sums.index_add_(0, local, tok)
            rows = torch.cat([torch.arange(a, b), torch.arange(B + a, B + b)]).to(counts.device)
            scale = counts[rows]
            scale = scale.clamp(min=1).to(sums.dtype) if ipo else torch.ones_like(sums)
            pc = (sums[: b - a] / scale[: b - a]).requires_grad_()
            pr = (sums[b - a:] / scale[b - a:]).requires_grad_()
            with torch.enable_grad():
                losses, r_c, r_r = dpo_losses(pc, pr, ref_c[a:b], ref_r[a:b], opts["beta"],
                                              opts["loss_type"], opts["label_smoothing"])
                g_c, g_r = torch.autograd.grad(losses.sum() / B, [pc, pr])
            stats[a:b] = torch.stack([losses.detach(), r_c, r_r, pc.detach(), pr.detach()], 1)
            if need_h or need_w:
                g_tok = (torch.cat([g_c, g_r]) / scale)[local]
                gh = _backprop_chunk(p, g_tok, p_tgt, hc, weight, grad_w)
                if grad_h is not None:
                    grad_h.index_copy_(0, p_pos, gh.to(grad_h.dtype))
            del p
        ctx.weight = weight if hasattr(weight, "ds_id") else None
        ctx.scale, ctx.used = 1.0, False
        ctx.grads = (grad_h.view_as(hidden) if grad_h is not None else None,
                     grad_w.to(weight.dtype) if grad_w is not None else None)
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
                   label_smoothing: float = 0.0, chunk_size: int = 1024) -> tuple[Tensor, dict]:
    """DPO loss with the loss fused into the log-prob kernel (gradients formed in the forward).
    chosen/rejected: dicts with input_ids, attention_mask, loss_mask [B,T*] (right padding is
    added to concatenate them into one forward). ref_chosen/ref_rejected: [B] reference
    log-prob SUMS (as model_sequence_logps returns); for ipo both are length-normalised here.
    Returns (mean loss, metrics: loss, rewards/*, logps/chosen, logps/rejected as 0-dim
    detached fp32 tensors). `model`: the HF model or the DeepSpeed engine (see _unwrap)."""
    T = max(chosen["input_ids"].shape[1], rejected["input_ids"].shape[1])
    cat = {k: torch.cat([_pad_right(chosen[k], T), _pad_right(rejected[k], T)])
           for k in ("input_ids", "attention_mask", "loss_mask")}
    body, weight = _body_and_weight(model)
    hidden = _final_hidden(body, cat["input_ids"], cat["attention_mask"])
    labels = shifted_labels(cat["input_ids"], cat["attention_mask"], cat["loss_mask"])
    return fused_dpo_loss_from_hidden(hidden, weight, labels, ref_chosen, ref_rejected, beta,
                                      loss_type, label_smoothing, chunk_size)


def fused_dpo_loss_from_hidden(hidden: Tensor, weight: Tensor, labels: Tensor, ref_chosen: Tensor,
                               ref_rejected: Tensor, beta: float, loss_type: str = "sigmoid",
                               label_smoothing: float = 0.0, chunk_size: int = 1024,
                               ignore_index: int = -100) -> tuple[Tensor, dict]:
    """The kernel behind fused_dpo_loss: hidden [2B,T,H] (chosen rows then rejected rows),
    labels [2B,T] shifted as in sequence_logps; ref_* [B] log-prob sums."""
    if hidden.shape[0] % 2 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"fused_dpo_loss: hidden {tuple(hidden.shape)} must be [2B,T,H] with "
                         f"labels [2B,T], got labels {tuple(labels.shape)}")
    B = hidden.shape[0] // 2
    acc = _acc(hidden)
    ref_c, ref_r = ref_chosen.to(hidden.device, acc), ref_rejected.to(hidden.device, acc)
    if loss_type == "ipo":
        counts = torch.bincount(_pack(labels, ignore_index)[2], minlength=2 * B).clamp(min=1)
        ref_c, ref_r = ref_c / counts[:B], ref_r / counts[B:]
    opts = dict(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
                chunk=chunk_size, ignore_index=ignore_index)
    with _gathered(weight):  # around apply: see sequence_logps
        loss, stats = _FusedDPO.apply(hidden.contiguous(), weight, labels, ref_c, ref_r, opts)
    metrics = dpo_metrics(stats[:, 0], stats[:, 1], stats[:, 2])
    metrics["logps/chosen"] = stats[:, 3].mean()
    metrics["logps/rejected"] = stats[:, 4].mean()
    return loss, metrics
