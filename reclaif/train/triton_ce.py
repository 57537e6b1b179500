"""Triton inner loop of the fused log-prob kernel (reclaif/train/logprobs.py).

The matmuls stay in torch (cuBLAS); what is replaced is the chain of elementwise passes over
each [chunk, vocab] logits block (gather, amax, sub, exp, sum, div, mul, scatter and, in
bf16, an fp32 copy of the block). Two kernels read the matmul's output in its own dtype and
do the math in fp32 (the idea of Liger-Kernel's fused linear cross-entropy):

  lse_and_target       one read of the block: online max / sum-exp, and the target logit
                       (for the DPO loss also added into its sequence's sum)
  grad_logits_inplace  one read and one write: the block becomes g * (onehot - softmax)

and, for the fused DPO loss, `dpo_pairs`: a group's losses and per-sequence loss gradients in
one launch, where the torch loop takes a dozen small ops. On a GPU the fused DPO loss is bound
by the host's launch rate at 2k-4k tokens (an H200 profile: the GPU idle a third of the time),
so launches, not FLOPs, are what it saves.

One program per row; a row is walked in BLOCK-wide slices, so any vocab size works.
Importing this module imports triton; logprobs.py imports it only when it takes this path.
Triton's CPU interpreter (CI's check of this logic) needs TRITON_INTERPRET=1 before triton is
first imported: @triton.jit, here and in triton's own library, picks compile or interpret then.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_BLOCK = 4096  # a slice of 4096 fp32 values: 16 registers a thread at 8 warps


@triton.jit
def _lse_and_target_kernel(logits_ptr, stride, targets_ptr, tok_ptr, lse_ptr, slot_ptr, sums_ptr,
                           V, SUMS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # row * stride overflows int32 past 2**31 elements
    base = logits_ptr + row * stride
    cols = tl.arange(0, BLOCK)
    # Running max m and sum s of exp(x - m); each slice rescales s to its new max.
    m = float("-inf")
    s = 0.0
    for start in range(0, V, BLOCK):
        x = tl.load(base + start + cols, mask=start + cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    lse = m + tl.log(s)
    t = tl.load(targets_ptr + row)
    # An out-of-range target reads nothing and gives NaN, where torch's gather would raise.
    x_t = tl.load(base + t, mask=(t >= 0) & (t < V), other=float("nan")).to(tl.float32)
    tl.store(tok_ptr + row, x_t - lse)
    tl.store(lse_ptr + row, lse)
    if SUMS:  # the row's sequence sum: fp32 atomics, as torch's index_add_ on CUDA
        tl.atomic_add(sums_ptr + tl.load(slot_ptr + row), x_t - lse)


@triton.jit
def _grad_logits_kernel(logits_ptr, stride, lse_ptr, targets_ptr, g_ptr, slot_ptr, V,
                        GATHER: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride
    cols = tl.arange(0, BLOCK)
    lse = tl.load(lse_ptr + row)
    g = tl.load(g_ptr + tl.load(slot_ptr + row)) if GATHER else tl.load(g_ptr + row)
    t = tl.load(targets_ptr + row)
    for start in range(0, V, BLOCK):
        idx = start + cols
        mask = idx < V
        x = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
        # -g * p, then + g at the target: the torch path's order (mul_, then scatter_add_).
        grad = -g * tl.exp(x - lse)
        grad = tl.where(idx == t, grad + g, grad)
        tl.store(base + idx, grad.to(logits_ptr.dtype.element_ty), mask=mask)


def _launch_shape(logits: Tensor, block: int | None) -> tuple[int, int, int]:
    """(BLOCK, num_warps, V) for a row-major [n, V] block."""
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"triton_ce: logits must be a row-major [n, V] matrix, got shape "
                         f"{tuple(logits.shape)} strides {logits.stride()}")
    V = logits.shape[1]
    b = block or min(MAX_BLOCK, triton.next_power_of_2(V))
    return b, 8 if b >= 2048 else 4, V


def lse_and_target(logits: Tensor, targets: Tensor, block: int | None = None,
                   slots: Tensor | None = None,
                   sums: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """logits [n, V] (fp32/bf16/fp16, not modified), targets [n] int64 in [0, V).
    Returns (logits[i, targets[i]] - lse[i], lse) as fp32 [n] tensors, and with slots [n] and
    sums (fp32) also adds each row's log-prob into sums[slots[i]]. `block`: the slice width (a
    power of two; default min(4096, V rounded up)), for tests of the online rescale."""
    b, warps, V = _launch_shape(logits, block)
    n = logits.shape[0]
    tok = torch.empty(n, dtype=torch.float32, device=logits.device)
    lse = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n:
        with_sums = sums is not None
        targets = targets.contiguous()
        _lse_and_target_kernel[(n,)](logits, logits.stride(0), targets, tok, lse,
                                     slots if with_sums else targets, sums if with_sums else tok,
                                     V, SUMS=with_sums, BLOCK=b, num_warps=warps)
    return tok, lse


def grad_logits_inplace(logits: Tensor, lse: Tensor, targets: Tensor, g: Tensor,
                        block: int | None = None, slots: Tensor | None = None) -> Tensor:
    """Overwrites logits [n, V] with g[i] * (onehot(targets[i]) - exp(logits[i] - lse[i])) in
    the logits' own dtype, the gradient of sum_i g[i] * log_softmax(logits)[i, targets[i]].
    lse, g: fp32 [n]; with slots [n], g is per slot and row i reads g[slots[i]]. Returns
    logits."""
    b, warps, V = _launch_shape(logits, block)
    n = logits.shape[0]
    if n:
        _grad_logits_kernel[(n,)](logits, logits.stride(0), lse.float().contiguous(),
                                  targets.contiguous(), g.float().contiguous(),
                                  targets if slots is None else slots, V,
                                  GATHER=slots is not None, BLOCK=b, num_warps=warps)
    return logits


LOSS_CODES = {"sigmoid": 0, "ipo": 1, "hinge": 2}


@triton.jit
def _dpo_pairs_kernel(sums_ptr, inv_len_ptr, ref_c_ptr, ref_r_ptr, coef_ptr, g_ptr, stats_ptr,
                      a, n, beta, ls, LOSS: tl.constexpr, IPO: tl.constexpr, BLOCK: tl.constexpr):
    # Pair a+i: chosen slot 2a+i, rejected slot 2a+n+i (fused_dpo's slot order).
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    c = 2 * a + i
    r = c + n
    pc = tl.load(sums_ptr + c, mask=m, other=0.0)
    pr = tl.load(sums_ptr + r, mask=m, other=0.0)
    if IPO:
        pc = pc * tl.load(inv_len_ptr + c, mask=m, other=0.0)
        pr = pr * tl.load(inv_len_ptr + r, mask=m, other=0.0)
    rc = tl.load(ref_c_ptr + a + i, mask=m, other=0.0)
    rr = tl.load(ref_r_ptr + a + i, mask=m, other=0.0)
    h = (pc - rc) - (pr - rr)
    # The formulas of reclaif.train.losses (dpo_losses, dpo_loss_grad), in fp32.
    if LOSS == 0:
        x = beta * h
        nls_pos = tl.maximum(-x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))  # -logsigmoid(x)
        loss = nls_pos * (1.0 - ls) + (nls_pos + x) * ls  # -logsigmoid(-x) = that + x
        sig_neg = 1.0 / (1.0 + tl.exp(x))  # sigmoid(-x)
        d = -beta * (1.0 - ls) * sig_neg + beta * ls * (1.0 - sig_neg)
    elif LOSS == 1:
        loss = (h - 0.5 / beta) * (h - 0.5 / beta)
        d = 2.0 * (h - 0.5 / beta)
    else:
        t = 1.0 - beta * h
        loss = tl.maximum(t, 0.0)
        d = tl.where(t > 0.0, -beta, 0.0)
    tl.store(g_ptr + c, tl.load(coef_ptr + c, mask=m, other=0.0) * d, mask=m)
    tl.store(g_ptr + r, tl.load(coef_ptr + r, mask=m, other=0.0) * d, mask=m)
    row = stats_ptr + (a + i) * 5
    tl.store(row, loss, mask=m)
    tl.store(row + 1, beta * (pc - rc), mask=m)
    tl.store(row + 2, beta * (pr - rr), mask=m)
    tl.store(row + 3, pc, mask=m)
    tl.store(row + 4, pr, mask=m)


def dpo_pairs(sums: Tensor, inv_len: Tensor | None, ref_c: Tensor, ref_r: Tensor, coef: Tensor,
              a: int, b: int, beta: float, loss_type: str, label_smoothing: float,
              g: Tensor, stats: Tensor) -> None:
    """The DPO loss of pairs [a, b) once their sequence sums are complete, in one launch:
    sums [2B] per slot (fused_dpo's order: the group's chosen slots 2a.., then its rejected),
    inv_len [2B] (IPO's length normalisation, else None), ref_c/ref_r [B] (normalised for IPO),
    coef [2B]. Writes g[slot] = coef[slot] * dloss/dh and stats[pair] = (loss, reward chosen,
    reward rejected, log-prob chosen, log-prob rejected). All fp32, contiguous."""
    n = b - a
    block = min(256, triton.next_power_of_2(max(n, 1)))
    _dpo_pairs_kernel[(triton.cdiv(n, block),)](
        sums, sums if inv_len is None else inv_len, ref_c, ref_r, coef, g, stats, a, n,
        float(beta), float(label_smoothing), LOSS=LOSS_CODES[loss_type],
        IPO=inv_len is not None, BLOCK=block)
