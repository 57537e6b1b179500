"""Triton inner loop of the fused log-prob kernel (reclaif/train/logprobs.py).

The matmuls stay in torch (cuBLAS); what is replaced is the chain of elementwise passes over
each [chunk, vocab] logits block (gather, amax, sub, exp, sum, div, mul, scatter and, in
bf16, an fp32 copy of the block). Two kernels read the matmul's output in its own dtype and
do the math in fp32 (the idea of Liger-Kernel's fused linear cross-entropy):

  lse_and_target       one read of the block: online max / sum-exp, and the target logit
  grad_logits_inplace  one read and one write: the block becomes g * (onehot - softmax)

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
def _lse_and_target_kernel(logits_ptr, stride, targets_ptr, tok_ptr, lse_ptr, V,
                           BLOCK: tl.constexpr):
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


@triton.jit
def _grad_logits_kernel(logits_ptr, stride, lse_ptr, targets_ptr, g_ptr, V,
                        BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride
    cols = tl.arange(0, BLOCK)
    lse = tl.load(lse_ptr + row)
    g = tl.load(g_ptr + row)
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


def lse_and_target(logits: Tensor, targets: Tensor,
                   block: int | None = None) -> tuple[Tensor, Tensor]:
    """logits [n, V] (fp32/bf16/fp16, not modified), targets [n] int64 in [0, V).
    Returns (logits[i, targets[i]] - lse[i], lse) as fp32 [n] tensors. `block`: the slice
    width (a power of two; default min(4096, V rounded up)), for tests of the online rescale."""
    b, warps, V = _launch_shape(logits, block)
    n = logits.shape[0]
    tok = torch.empty(n, dtype=torch.float32, device=logits.device)
    lse = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n:
        _lse_and_target_kernel[(n,)](logits, logits.stride(0), targets.contiguous(), tok, lse, V,
                                     BLOCK=b, num_warps=warps)
    return tok, lse


def grad_logits_inplace(logits: Tensor, lse: Tensor, targets: Tensor, g: Tensor,
                        block: int | None = None) -> Tensor:
    """Overwrites logits [n, V] with g[i] * (onehot(targets[i]) - exp(logits[i] - lse[i])) in
    the logits' own dtype, the gradient of sum_i g[i] * log_softmax(logits)[i, targets[i]].
    lse, g: fp32 [n]. Returns logits."""
    b, warps, V = _launch_shape(logits, block)
    n = logits.shape[0]
    if n:
        _grad_logits_kernel[(n,)](logits, logits.stride(0), lse.float().contiguous(),
                                  targets.contiguous(), g.float().contiguous(), V,
                                  BLOCK=b, num_warps=warps)
    return logits
