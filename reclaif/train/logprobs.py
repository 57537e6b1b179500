"""Sequence log-probs from final hidden states and the lm_head weight, without [tokens, vocab]
logits.

The usual path (logits = h @ W.T, log_softmax, gather) holds several [tokens, vocab] fp32
buffers at once; at vocab 49k they dwarf the model. Here only the tokens that count are
visited, a chunk at a time, in ONE reused [chunk, vocab] buffer (max, exp and softmax are done
in place), with log-sum-exp and sums in fp32. Backward recomputes each chunk's logits (one
extra matmul) and writes grad_hidden and accumulates grad_weight in an fp32 accumulator.

`fused_dpo_loss` (reclaif/train/fused_dpo.py) goes one step further (as Liger does): chunks
hold whole chosen/rejected pairs, so each chunk's DPO loss and its gradient are known inside
the chunk; gradients are formed in the forward and backward only scales them.

`kernel` picks the inner loop over each [chunk, vocab] block: "torch" (the reference: about
nine elementwise passes over the block, made fp32 first), "triton" (reclaif/train/triton_ce.py:
two passes over the block in the matmul's own dtype; on CUDA, or on CPU under
TRITON_INTERPRET=1), or "auto" (triton where it can run, torch elsewhere). Both do the same
math in fp32 on the same logits and differ only by the rounding of exp and the order of sums.

ZeRO-3: the lm_head weight is partitioned (an empty tensor) whenever its module is not running;
a kernel that bypasses the module's forward must gather it itself (TRL issue 4544). Forward:
gathered around Function.apply (autograd records the input's shape there). Backward: gathered
again and kept whole until autograd has accumulated its full-shape gradient (DeepSpeed's
reduce-scatter hook takes it there), then partitioned. With gradient accumulation pass the
DeepSpeed ENGINE as `model` (see _unwrap). tests/test_logprobs_zero3.py proves the gradients
equal a single-process run.

Public face. Callers: `sequence_logps`, `model_sequence_logps`, `shifted_labels`,
`under_autocast`, KERNELS and WEIGHT_GRAD_ACC with `check_weight_grad_acc`. The kernel's other
half, fused_dpo.py, also builds on the chunk primitives (`chunk_logits`, `softmax_inplace`,
`backprop_chunk`, `matmul_grads`, `GradWeight`, `acc_dtype`, `inner_loop`), the ZeRO-3 helpers
(`gathered`, `gather_until_accumulated`, `zero3_partitioned`) and the model split
(`body_and_weight`, `final_hidden`); nothing outside reclaif/train/ needs them. Underscored
names stay in this module.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from reclaif.config import LOGPROB_KERNELS, LOGPROB_WEIGHT_GRADS


def zero3_partitioned(t: Tensor) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions `t`: zero.Init marks its parameters with ds_id, and
    a plain tensor or parameter has no such attribute (DeepSpeed's own test for it)."""
    return hasattr(t, "ds_id")


def gathered(weight: Tensor) -> contextlib.AbstractContextManager:
    """Gathers a ZeRO-3 partitioned parameter for the duration of the block (no-op otherwise)."""
    if zero3_partitioned(weight):
        import deepspeed

        return deepspeed.zero.GatheredParameters([weight], modifier_rank=None)
    return contextlib.nullcontext()


def gather_until_accumulated(weight: Tensor) -> None:
    """ZeRO-3 backward: gathers the parameter and keeps it whole until autograd has accumulated
    its gradient, then partitions it again. AccumulateGrad copies a gradient into the shape the
    parameter has at that moment, so releasing it inside our backward (as GatheredParameters'
    exit would) fails with a [0]-shaped parameter. DeepSpeed's own reduce hook was registered
    first, so it runs before this release."""
    if not zero3_partitioned(weight):
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


def softmax_inplace(logits: Tensor, targets: Tensor,
                    normalize: bool = True) -> tuple[Tensor, Tensor]:
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


def under_autocast(hidden: Tensor, weight: Tensor
                   ) -> tuple[Tensor, Tensor, contextlib.AbstractContextManager]:
    """Under torch.autocast (the torch engine's bf16) the kernel computes as the model's own
    lm_head would there: hidden and weight cast (differentiably) to the autocast dtype, then the
    kernel runs with autocast off, so its own dtypes (fp32 sums, the weight-gradient
    accumulator that weight_grad_acc names) are what runs. The reference log-probs and the
    policy's forward go through here alike, so both see the same rounding."""
    dev = hidden.device.type
    if not torch.is_autocast_enabled(dev):
        return hidden, weight, contextlib.nullcontext()
    dtype = torch.get_autocast_dtype(dev)
    return hidden.to(dtype), weight.to(dtype), torch.autocast(dev, enabled=False)


def acc_dtype(t: Tensor) -> torch.dtype:
    """Accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)."""
    return torch.promote_types(t.dtype, torch.float32)


def chunk_logits(h: Tensor, weight: Tensor) -> Tensor:
    out = h @ weight.T
    return out.to(acc_dtype(out))


KERNELS = LOGPROB_KERNELS


def inner_loop(kernel: str, hidden: Tensor) -> ModuleType | None:
    """The triton_ce module when the Triton inner loop is to be used, None for torch's."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "torch":
        return None
    if hidden.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        why = f"needs fp32, bf16 or fp16 inputs (its math is fp32), got {hidden.dtype}"
    elif not (hidden.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        why = "needs CUDA tensors, or TRITON_INTERPRET=1 for Triton's CPU interpreter"
    else:
        try:  # imported here: triton is optional, and absent on most CPU machines
            return importlib.import_module("reclaif.train.triton_ce")
        except ImportError as e:
            why = f"needs the triton package (pip install 'triton>=3.2'): {e}"
    if kernel == "triton":
        raise ValueError(f"kernel='triton' {why}")
    return None


WEIGHT_GRAD_ACC = LOGPROB_WEIGHT_GRADS


def check_weight_grad_acc(caller: str, value: str) -> None:
    if value not in WEIGHT_GRAD_ACC:
        raise ValueError(f"{caller}: weight_grad_acc must be one of {WEIGHT_GRAD_ACC}, "
                         f"got {value!r}")


class GradWeight:
    """The lm_head weight gradient, summed over chunks. With acc="fp32" (the default) several
    chunks of a bf16/fp16 weight add into an fp32 accumulator (sums over many chunks in bf16
    would lose the small ones); with acc="param" they add into the gradient itself in the
    weight's dtype, as Liger-Kernel does: each chunk's GEMM still sums in fp32, but the running
    sum rounds once per chunk, and no [V, H] fp32 buffer (0.5 GB at 32000 x 4096) is held.
    A lone chunk's GEMM IS the gradient, written in the weight's dtype with no accumulator, as
    the usual path does: in bf16 at [32000, 4096] an fp32 accumulator and its final cast move as
    many bytes as the GEMM itself. `acc` is checked by the public entry points."""

    def __init__(self, weight: Tensor, chunks: int, acc: str = "fp32"):
        self.dtype, self.out = weight.dtype, None
        self.shape, self.device = weight.shape, weight.device
        # fp32/fp64 weights: the gradient is its own accumulator
        in_param = chunks == 1 or acc == "param" or acc_dtype(weight) == weight.dtype
        # Not zeroed: the first chunk's GEMM overwrites it (beta=0), saving a [V, H] fill.
        self.acc = (None if in_param else
                    torch.empty(weight.shape, dtype=acc_dtype(weight), device=weight.device))
        self.empty = True

    def add(self, low: Tensor, acc: Tensor, h: Tensor) -> None:
        """low: grad_logits in the weight's dtype; acc: the same in the accumulator's, where
        it is at hand (else low again); h: the chunk's hidden states."""
        beta, self.empty = (0 if self.empty else 1), False
        if self.acc is None:
            h = h.to(low.dtype)
            if self.out is None:
                self.out = low.T @ h
            else:
                self.out.addmm_(low.T, h)
        elif h.is_cuda and h.dtype != self.acc.dtype:
            # bf16/fp16 on a GPU: a tensor-core GEMM that adds into the fp32 accumulator in
            # place (cuBLAS with an fp32 C). An fp32 GEMM here was 4-9x slower than the whole
            # usual path on an H200, and `acc += low.T @ h` holds a [V, H] temporary.
            try:
                torch.ops.aten.addmm.dtype_out(self.acc, low.T, h, self.acc.dtype, beta=beta,
                                               out=self.acc)
            except (RuntimeError, NotImplementedError):  # torch builds without the overload
                grad = low.T @ h
                self.acc.copy_(grad) if beta == 0 else self.acc.add_(grad)
        else:
            self.acc.addmm_(acc.T.to(self.acc.dtype), h.to(self.acc.dtype), beta=beta)

    def result(self) -> Tensor:
        if self.empty:  # no chunk at all: nothing was counted
            return torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        return self.out if self.acc is None else self.acc.to(self.dtype)


def backprop_chunk(p: Tensor, g: Tensor, targets: Tensor, h: Tensor, weight: Tensor,
                   grad_weight: GradWeight | None) -> Tensor:
    """p [n, V] softmax (overwritten by grad_logits = g * (onehot - p)); returns grad_h [n, H]
    and adds grad_logits.T @ h into grad_weight."""
    p.mul_(-g[:, None])
    p.scatter_add_(1, targets[:, None], g[:, None])
    low = p.to(weight.dtype) if weight.dtype != p.dtype else p
    return matmul_grads(low, p, h, weight, grad_weight)


def matmul_grads(low: Tensor, acc: Tensor, h: Tensor, weight: Tensor,
                 grad_weight: GradWeight | None) -> Tensor:
    """grad_logits in the weight's dtype (low) and in the accumulator's where it is at hand
    (acc; else low again): adds grad_logits.T @ h into grad_weight, returns grad_logits @ W."""
    if grad_weight is not None:
        grad_weight.add(low, acc, h)
    return low @ weight


def _token_logps(h2d: Tensor, weight: Tensor, pos: Tensor, targets: Tensor,
                 chunk: int, ce: ModuleType | None = None) -> tuple[Tensor, Tensor]:
    n = pos.numel()
    tok = torch.empty(n, dtype=acc_dtype(h2d), device=h2d.device)
    lse = torch.empty(n, dtype=acc_dtype(h2d), device=h2d.device)
    for c in _chunks(n, chunk):
        if ce is not None:
            tok[c], lse[c] = ce.lse_and_target(h2d[pos[c]] @ weight.T, targets[c])
            continue
        logits = chunk_logits(h2d[pos[c]], weight)
        tok[c], lse[c] = softmax_inplace(logits, targets[c], normalize=False)
        del logits
    return tok, lse


class _SequenceLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, pos: Tensor, targets: Tensor,
                seq: Tensor, batch: int, chunk: int, ce: ModuleType | None,
                weight_grad_acc: str) -> Tensor:
        tok, lse = _token_logps(hidden.reshape(-1, hidden.shape[-1]), weight, pos, targets, chunk,
                                ce)
        # A ZeRO-3 parameter is kept as the object itself: an unpacked saved tensor would lose
        # the ds_* attributes needed to gather it again in backward.
        zero3 = zero3_partitioned(weight)
        ctx.zero3_weight = weight if zero3 else None
        ctx.save_for_backward(hidden, None if zero3 else weight, pos, targets, seq, lse)
        ctx.chunk, ctx.ce, ctx.weight_grad_acc = chunk, ce, weight_grad_acc
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
        g_tok = grad_out.to(acc_dtype(hidden))[seq]
        if need_w:
            gather_until_accumulated(weight)
        with gathered(weight) if not need_w else contextlib.nullcontext():
            chunks = list(_chunks(pos.numel(), ctx.chunk))
            grad_w = GradWeight(weight, len(chunks), ctx.weight_grad_acc) if need_w else None
            for c in chunks:
                hc = h2d[pos[c]]
                if ctx.ce is not None:
                    low = ctx.ce.grad_logits_inplace(hc @ weight.T, lse[c], targets[c], g_tok[c])
                    gh = matmul_grads(low, low, hc, weight, grad_w)
                    del low
                else:
                    logits = chunk_logits(hc, weight)
                    # softmax from the saved lse: exp(logits - lse), in place.
                    p = logits.sub_(lse[c][:, None]).exp_()
                    gh = backprop_chunk(p, g_tok[c], targets[c], hc, weight, grad_w)
                    del logits, p
                if grad_h is not None:
                    grad_h.index_copy_(0, pos[c], gh.to(grad_h.dtype))
        return (grad_h.view_as(hidden) if grad_h is not None else None,
                grad_w.result() if grad_w is not None else None,
                None, None, None, None, None, None, None)


def sequence_logps(hidden: Tensor, weight: Tensor, labels: Tensor, chunk_size: int = 1024,
                   ignore_index: int = -100, kernel: str = "auto",
                   weight_grad_acc: str = "fp32") -> tuple[Tensor, Tensor]:
    """hidden [B,T,H] final hidden states; weight [V,H] lm_head weight; labels [B,T] where
    labels[b,t] is the token predicted FROM hidden[b,t] (already shifted) or ignore_index.
    Returns (sum of token log-probs per sequence [B] fp32, token counts [B] int64).
    Differentiable w.r.t. hidden and weight; under torch.no_grad nothing is kept.
    kernel: "auto", "torch" or "triton", the inner loop over each chunk (module docstring).
    weight_grad_acc: "fp32" or "param", where a bf16/fp16 weight's gradient sums over chunks
    (GradWeight)."""
    check_weight_grad_acc("sequence_logps", weight_grad_acc)
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(f"sequence_logps: hidden {tuple(hidden.shape)} must be [B,T,H] and "
                         f"labels {tuple(labels.shape)} [B,T]")
    if chunk_size < 1:
        raise ValueError(f"sequence_logps: chunk_size must be >= 1, got {chunk_size}")
    B = hidden.shape[0]
    pos, targets, seq = _pack(labels, ignore_index)
    counts = torch.bincount(seq, minlength=B)
    grad_needed = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if not grad_needed:
        with torch.no_grad(), gathered(weight):
            h, w, plain = under_autocast(hidden, weight)
            ce = inner_loop(kernel, h)
            with plain:
                tok, _ = _token_logps(h.contiguous().reshape(-1, h.shape[-1]), w, pos, targets,
                                      chunk_size, ce)
        return torch.zeros(B, dtype=tok.dtype, device=hidden.device).index_add_(0, seq, tok), counts
    # Gathered around apply, not inside forward: autograd records the weight's shape at apply
    # time and rejects a full-shape gradient for a shape-[0] (partitioned) input.
    with gathered(weight):
        h, w, plain = under_autocast(hidden, weight)
        ce = inner_loop(kernel, h)
        with plain:
            return _SequenceLogps.apply(h.contiguous(), w, pos, targets, seq, B, chunk_size, ce,
                                        weight_grad_acc), counts


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
    # By class name or attributes, not isinstance: deepspeed stays unimported without it.
    if type(model).__name__ == "DeepSpeedEngine" or (hasattr(model, "module")
                                                      and hasattr(model, "zero_optimization")):
        # DeepSpeed 0.19's ZeRO optimizers have it; older releases' and non-ZeRO ones do not.
        flag = getattr(model.optimizer, "clear_backward_seen_flag", None)
        if flag is not None:
            flag()
        return model.module
    return model


def body_and_weight(model: torch.nn.Module) -> tuple[torch.nn.Module, Tensor]:
    model = _unwrap(model)
    cfg = model.config
    # Architectures differ: Gemma 2's config has final_logit_softcapping, Cohere's logit_scale,
    # most have neither; either would make the lm_head more than the plain matmul done here.
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(cfg, attr, None) not in (None, 1.0):
            raise ValueError(f"fused log-probs support a plain linear lm_head; this model's "
                             f"config sets {attr}={getattr(cfg, attr)}")
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:  # need not be an nn.Linear
        raise ValueError("fused log-probs need an lm_head Linear without bias")
    # transformers 5 has a generic get_decoder, 4.x only some architectures; else the prefix.
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None or body is model:
        body = getattr(model, model.base_model_prefix)
    return body, head.weight


def final_hidden(body: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor,
                 position_ids: Tensor | None = None) -> Tensor:
    out = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
               use_cache=False)
    # A ModelOutput, or a tuple where the model's config sets return_dict=False.
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def model_sequence_logps(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor,
                         loss_mask: Tensor, chunk_size: int = 1024, kernel: str = "auto",
                         weight_grad_acc: str = "fp32") -> tuple[Tensor, Tensor]:
    """Runs the HF causal LM's body to final hidden states; hidden[:, t] predicts
    input_ids[:, t+1], counted where loss_mask[:, t+1] (and attention_mask). Returns
    (log-prob sums [B] fp32, token counts [B]). Works with tied or untied lm_head and under
    ZeRO-3 (the weight is gathered inside the kernel). `model` is the HF model or, under
    DeepSpeed, the ENGINE (needed for correct gradient accumulation, see _unwrap)."""
    body, weight = body_and_weight(model)
    hidden = final_hidden(body, input_ids, attention_mask)
    labels = shifted_labels(input_ids, attention_mask, loss_mask)
    return sequence_logps(hidden, weight, labels, chunk_size, kernel=kernel,
                          weight_grad_acc=weight_grad_acc)
