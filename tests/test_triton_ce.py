"""The fused log-prob kernel's Triton inner loop (reclaif/train/triton_ce.py) against its torch
inner loop: on CPU under Triton's interpreter at odd shapes in fp32 (tokens, vocab and chunk not
multiples of the kernels' slice width), and on a GPU in bf16 against an fp64 oracle.

Triton fixes at import whether its own library (tl.max, tl.sum are @triton.jit functions) is
compiled or interpreted, so TRITON_INTERPRET=1 must be set before anything imports triton; a
test process that already imported it (transformers may) cannot switch. The interpreter cases
therefore run in a child pytest process on this file with the variable set (one test below);
nothing leaks into the parent or other test files. The interpreter reads bf16 exactly but casts
fp32 to bf16 by truncation (a GPU rounds to nearest), so bf16 gradients are checked on the GPU.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from reclaif.train.fused_dpo import fused_dpo_loss_from_hidden
from reclaif.train.logprobs import sequence_logps
from reclaif.train.losses import dpo_loss


def _release(package: str) -> tuple[int, int]:
    return tuple(int(part) for part in version(package).split(".")[:2])


INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(
    not HAS_TRITON,
    reason="triton is not installed (pip install 'triton>=3.2'; the dev extra has it)")
# Before 3.7 the interpreter turns a runtime loop bound into an int with int(1-element array),
# which numpy 2.4 refuses (triton-lang/triton#9171); compiled kernels are not affected.
interpreter_works = pytest.mark.skipif(
    HAS_TRITON and _release("triton") < (3, 7) and _release("numpy") >= (2, 4),
    reason="Triton's interpreter before 3.7 fails under numpy >= 2.4 (triton-lang/triton#9171)")
under_interpreter = pytest.mark.skipif(
    not INTERPRETING, reason="run by test_interpreter_cases_pass_in_a_child_process")
on_gpu = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETING,
                            reason="needs a CUDA device and compiled kernels")


def interpreter_case(test):
    return needs_triton(interpreter_works(under_interpreter(test)))


@pytest.fixture
def interpreted(monkeypatch):
    """triton_ce, its kernels run by Triton's CPU interpreter; rows of 1000 are walked in four
    slices, the last one partial, so the running rescale is exercised."""
    module = importlib.import_module("reclaif.train.triton_ce")
    monkeypatch.setattr(module, "MAX_BLOCK", 256)
    return module


@needs_triton
@interpreter_works
@pytest.mark.skipif(INTERPRETING, reason="this is the child process")
def test_interpreter_cases_pass_in_a_child_process():
    cases = [name for name, f in globals().items() if name.startswith("test_")
             and under_interpreter.mark in getattr(f, "pytestmark", [])]
    assert cases
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                          str(Path(__file__).relative_to(repo))], cwd=repo, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "TRITON_INTERPRET": "1"})
    report = out.stdout[-6000:] + out.stderr[-2000:]
    assert out.returncode == 0, report
    passed = [line for line in out.stdout.splitlines() if line.startswith("PASSED")]
    for name in cases:  # every case ran, none was skipped
        assert any(f"::{name}" in line for line in passed), f"{name} did not pass:\n{report}"


def odd_batch(B=3, T=16, H=24, V=1000, seed=0, dtype=torch.float32):
    """37 counted tokens (not a multiple of the chunk of 16), V=1000 (not of a slice)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, H, generator=g) / H ** 0.25
    w = torch.randn(V, H, generator=g) / H ** 0.25
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :5] = -100
    labels[2, 10:] = -100
    return h.to(dtype), w.to(dtype), labels


def logps_and_grads(h, w, labels, kernel, chunk=16):
    h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    logps, _ = sequence_logps(h, w, labels, chunk_size=chunk, kernel=kernel)
    # a weight per sequence, so each row's gradient scale is checked
    gh, gw = torch.autograd.grad((logps * torch.tensor([1.0, -0.5, 2.0])).sum(), [h, w])
    return logps.detach(), gh, gw


def assert_same_as_torch_loop(h, w, labels, chunk=16):
    want = logps_and_grads(h, w, labels, "torch", chunk)
    got = logps_and_grads(h, w, labels, "triton", chunk)
    for name, a, b, atol in zip(("logps", "grad_hidden", "grad_weight"), got, want,
                                (2e-5, 1e-6, 1e-6)):
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=name)


@interpreter_case
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("block", [128, 1024])  # 8 slices (the last one partial), or one
def test_lse_and_target_is_logsumexp_for_rows_that_overflow_a_naive_exp(interpreted, block,
                                                                         dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(13, 1000, generator=g) * 3
    x += torch.linspace(-200, 200, 13)[:, None]  # exp(200) is inf in fp32
    x[5, 999] = 250.0  # a maximum in the partial last slice
    x = x.to(dtype)
    targets = torch.randint(0, 1000, (13,), generator=g)
    before = x.clone()
    tok, lse = interpreted.lse_and_target(x, targets, block=block)
    want_lse = torch.logsumexp(x.double(), 1)
    torch.testing.assert_close(lse.double(), want_lse, rtol=0, atol=1e-4)
    torch.testing.assert_close(tok.double(), x.double().gather(1, targets[:, None])[:, 0]
                               - want_lse, rtol=0, atol=1e-4)
    assert torch.equal(x, before)  # the logits are only read


@interpreter_case
@pytest.mark.parametrize("block", [128, 1024])
def test_grad_logits_inplace_is_the_log_softmax_gradient(interpreted, block):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(13, 1000, generator=g) * 4
    targets = torch.randint(0, 1000, (13,), generator=g)
    gs = torch.randn(13, generator=g)
    x64 = x.double().requires_grad_()
    (torch.log_softmax(x64, 1).gather(1, targets[:, None])[:, 0] * gs).sum().backward()
    lse = torch.logsumexp(x, 1)
    out = interpreted.grad_logits_inplace(x, lse, targets, gs, block=block)
    assert out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(x.double(), x64.grad, rtol=0, atol=1e-6)


@interpreter_case
def test_sequence_logps_triton_loop_matches_torch_loop_at_odd_shapes(interpreted):
    h, w, labels = odd_batch()
    assert (labels != -100).sum() == 37
    assert_same_as_torch_loop(h, w, labels, chunk=16)
    with torch.no_grad():
        torch.testing.assert_close(sequence_logps(h, w, labels, 16, kernel="triton")[0],
                                   sequence_logps(h, w, labels, 16, kernel="torch")[0],
                                   rtol=0, atol=2e-5)


@interpreter_case
@pytest.mark.parametrize("broken", ["lse_and_target", "grad_logits_inplace"])
def test_a_kernel_off_by_one_part_in_ten_thousand_is_caught(interpreted, monkeypatch, broken):
    """The comparison above fails when either kernel is slightly wrong: the Triton path is really
    taken, and the tolerances are tight enough to see it."""
    real = getattr(interpreted, broken)

    def off(*args, **kwargs):
        out = real(*args, **kwargs)
        first = out[0] if isinstance(out, tuple) else out
        first[0:1].mul_(1 + 1e-4)  # first token (and its row of the gradient)
        return out
    monkeypatch.setattr(interpreted, broken, off)
    h, w, labels = odd_batch()
    with pytest.raises(AssertionError):
        assert_same_as_torch_loop(h, w, labels)


def dpo_and_grads(h, w, labels, kernel, loss_type, chunk, ls=0.0, rpo=0.0):
    h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    with torch.no_grad():  # references near the policy: a margin where the loss is not flat
        lp = sequence_logps(h, w, labels, kernel="torch")[0]
    rc, rr = lp[:2] + torch.tensor([0.3, -0.2]), lp[2:] + torch.tensor([-0.1, 0.4])
    loss, metrics = fused_dpo_loss_from_hidden(h, w, labels, rc, rr, 0.5, loss_type, ls,
                                               chunk_size=chunk, kernel=kernel,
                                               rpo_alpha=rpo)
    return loss.detach(), metrics, *torch.autograd.grad(loss, [h, w])


@interpreter_case
# chunk 1024: both pairs in one chunk; 16: each pair alone, longer than the chunk
@pytest.mark.parametrize("loss_type,chunk,ls,rpo", [
    ("sigmoid", 1024, 0.0, 0.0), ("ipo", 16, 0.0, 0.0), ("hinge", 16, 0.0, 0.0),
    ("sigmoid", 16, 0.2, 0.0), ("sigmoid", 16, 0.0, 0.5), ("ipo", 1024, 0.0, 0.5)])
def test_fused_dpo_triton_loop_matches_torch_loop_at_odd_shapes(interpreted, loss_type, chunk, ls,
                                                                 rpo):
    """The Triton loop's own DPO kernel (dpo_pairs) against the torch loop's dpo_losses and
    dpo_loss_grad: every loss type, label smoothing, RPO's NLL term, one group and one group
    per pair."""
    h, w, labels = odd_batch(B=4, T=13, seed=1)  # 2 pairs; chunk 16 splits every pair off
    labels[1, :6] = -100
    loss, metrics, gh, gw = dpo_and_grads(h, w, labels, "triton", loss_type, chunk, ls, rpo)
    ref_loss, ref_metrics, ref_gh, ref_gw = dpo_and_grads(h, w, labels, "torch", loss_type,
                                                          chunk, ls, rpo)
    assert ref_gw.abs().max() > 1e-3  # a case with a real gradient
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-6)
    for k, v in ref_metrics.items():
        torch.testing.assert_close(metrics[k], v, rtol=0, atol=2e-5, msg=k)
    torch.testing.assert_close(gh, ref_gh, rtol=0, atol=1e-6)
    torch.testing.assert_close(gw, ref_gw, rtol=0, atol=1e-6)


def _off(real, what):
    def broken(*args, **kwargs):
        out = real(*args, **kwargs)
        if what == "dpo_loss":  # the first pair's loss, a thousandth off
            kwargs.get("stats", args[-1])[:, 0].add_(1e-3)
        elif what == "dpo_grad":  # one sequence's loss gradient, a thousandth off
            args[-2].mul_(1 + 1e-3)
        else:  # lse_and_target's lse or grad_logits_inplace's first row
            (out[1] if isinstance(out, tuple) else out)[0:1].mul_(1 + 1e-4)
        return out
    return broken


@interpreter_case
@pytest.mark.parametrize("broken", ["lse_and_target", "grad_logits_inplace", "dpo_loss",
                                    "dpo_grad"])
def test_a_fused_dpo_kernel_slightly_off_is_caught(interpreted, monkeypatch, broken):
    name = "dpo_pairs" if broken.startswith("dpo") else broken
    monkeypatch.setattr(interpreted, name, _off(getattr(interpreted, name), broken))
    h, w, labels = odd_batch(B=4, T=13, seed=1)
    got = dpo_and_grads(h, w, labels, "triton", "sigmoid", 16)
    want = dpo_and_grads(h, w, labels, "torch", "sigmoid", 16)
    with pytest.raises(AssertionError):
        for a, b in zip((got[0], got[1]["loss"], *got[2:]), (want[0], want[1]["loss"], *want[2:])):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_auto_is_the_torch_loop_on_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    h, w, labels = odd_batch()
    for a, b in zip(logps_and_grads(h, w, labels, "auto"), logps_and_grads(h, w, labels, "torch")):
        assert torch.equal(a, b)


def test_a_kernel_that_cannot_run_is_refused_with_the_reason(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    h, w, labels = odd_batch()
    with pytest.raises(ValueError, match="CUDA tensors, or TRITON_INTERPRET=1"):
        sequence_logps(h, w, labels, kernel="triton")
    with pytest.raises(ValueError, match="fp32, bf16 or fp16"):
        sequence_logps(h.double(), w.double(), labels, kernel="triton")
    with pytest.raises(ValueError, match="kernel must be one of"):
        fused_dpo_loss_from_hidden(h[:2], w, labels[:2], torch.zeros(1), torch.zeros(1), 0.1,
                                   kernel="cuda")


def oracle(h, w, labels):
    logp = torch.log_softmax(h.double() @ w.double().T, -1)
    tok = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return (tok * (labels != -100)).sum(-1)


@needs_triton
@on_gpu
def test_cuda_bf16_triton_loop_against_fp64_oracle():
    # V=5000: two slices of 4096 on the GPU, the second one partial
    h, w, labels = odd_batch(B=3, T=40, H=32, V=5000, seed=1, dtype=torch.bfloat16)
    weights = torch.tensor([1.0, -0.5, 2.0])
    got = {}
    for kernel in ("triton", "torch"):
        hc, wc = (t.cuda().requires_grad_() for t in (h, w))
        logps, _ = sequence_logps(hc, wc, labels.cuda(), chunk_size=16, kernel=kernel)
        gh, gw = torch.autograd.grad((logps * weights.cuda()).sum(), [hc, wc])
        assert gh.dtype == gw.dtype == torch.bfloat16
        got[kernel] = [t.detach().cpu().double() for t in (logps, gh, gw)]
    h64, w64 = (t.double().requires_grad_() for t in (h, w))
    ref = oracle(h64, w64, labels)
    want = [ref.detach(), *torch.autograd.grad((ref * weights.double()).sum(), [h64, w64])]
    for name, a, b, t, atol in zip(("logps", "grad_hidden", "grad_weight"), got["triton"], want,
                                   got["torch"], (0.6, 0.1, 0.1)):
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=name)
        # no worse than the torch loop, which reads the same bf16 logits
        assert (a - b).abs().max() <= 1.1 * (t - b).abs().max() + 1e-3, name


@needs_triton
@on_gpu
def test_cuda_bf16_fused_dpo_triton_loop_against_fp64_oracle():
    h, w, labels = odd_batch(B=4, T=24, H=64, V=5000, seed=7, dtype=torch.bfloat16)
    labels[:, :8] = -100
    rc, rr = torch.tensor([-120.0, -80.0]), torch.tensor([-125.0, -78.0])
    got = {}
    for kernel in ("triton", "torch"):
        hc, wc = (t.cuda().requires_grad_() for t in (h, w))
        loss = fused_dpo_loss_from_hidden(hc, wc, labels.cuda(), rc.cuda(), rr.cuda(), 0.1,
                                          chunk_size=24, kernel=kernel)[0]
        got[kernel] = [t.detach().cpu().double()
                       for t in (loss, *torch.autograd.grad(loss, [hc, wc]))]
    h64, w64 = (t.double().requires_grad_() for t in (h, w))
    lp = oracle(h64, w64, labels)
    ref = dpo_loss(lp[:2], lp[2:], rc.double(), rr.double(), 0.1)[0]
    want = [ref.detach(), *torch.autograd.grad(ref, [h64, w64])]
    assert want[2].abs().max() > 1e-3  # a case with a real gradient
    for name, a, b, t, atol in zip(("loss", "grad_hidden", "grad_weight"), got["triton"], want,
                                   got["torch"], (5e-3, 2e-3, 2e-3)):
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=name)
        assert (a - b).abs().max() <= 1.1 * (t - b).abs().max() + 1e-4, name
