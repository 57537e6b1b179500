"""The fused log-prob kernel against an fp64 oracle (full logits -> log_softmax -> gather):
values and both gradients, gradcheck on odd shapes, no-grad mode, tiny real Llama models with
tied and untied embeddings, the fused DPO loss, and `reclaif bench logprobs --quick --json`."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from reclaif.train.fused_dpo import (pair_groups, fused_dpo_loss,
                                     fused_dpo_loss_from_hidden)
from reclaif.train.logprobs import model_sequence_logps, sequence_logps
from reclaif.train.losses import dpo_loss


def oracle(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax((hidden.double() @ weight.double().T), dim=-1)
    keep = labels != -100
    tok = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return (tok * keep).sum(-1)


def odd_batch(dtype=torch.float64, B=4, T=7, H=3, V=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, H, generator=g).to(dtype).requires_grad_()
    w = torch.randn(V, H, generator=g).to(dtype).requires_grad_()
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :4] = -100   # a prompt that does not count
    labels[2] = -100       # a fully masked row
    labels[-1, -1] = -100
    return h, w, labels


@pytest.mark.parametrize("chunk", [1, 4, 1024])
def test_gradcheck_float64_odd_shapes(chunk):
    h, w, labels = odd_batch()
    assert torch.autograd.gradcheck(
        lambda h, w: sequence_logps(h, w, labels, chunk_size=chunk)[0], (h, w))


def test_values_and_counts_match_oracle_with_masked_rows():
    h, w, labels = odd_batch()
    logps, counts = sequence_logps(h, w, labels, chunk_size=5)  # 16 tokens: chunks 5,5,5,1
    torch.testing.assert_close(logps, oracle(h, w, labels), rtol=0, atol=1e-12)
    assert counts.tolist() == [3, 7, 0, 6]
    assert logps[2].item() == 0.0


# The CUDA cases run where a GPU is (they ran on an H200: see docs/BENCHMARKS.md); the
# kernel is the same PyTorch code on both devices, cuBLAS and TF32-free fp32 matmuls there,
# except that where triton is installed kernel="auto" takes the Triton inner loop on a GPU
# (tests/test_triton_ce.py compares the two).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,atol,gatol", [(torch.float32, 2e-4, 2e-5),
                                              (torch.bfloat16, 0.6, 0.1)])
def test_low_precision_values_and_both_gradients_against_fp64_oracle(dtype, atol, gatol, device):
    h, w, labels = odd_batch(dtype, B=3, T=40, H=32, V=300, seed=1)
    h, w = (t.detach().to(device).requires_grad_() for t in (h, w))
    labels = labels.to(device)
    logps, _ = sequence_logps(h, w, labels, chunk_size=16)
    assert logps.dtype == torch.float32  # sums are kept in fp32 whatever the input dtype
    assert logps.device.type == device
    gh, gw = torch.autograd.grad(logps.sum(), [h, w])
    assert gh.dtype == dtype and gw.dtype == dtype
    h64, w64 = (t.detach().cpu().double().requires_grad_() for t in (h, w))
    ref = oracle(h64, w64, labels.cpu())
    gh64, gw64 = torch.autograd.grad(ref.sum(), [h64, w64])
    logps, gh, gw = logps.cpu(), gh.cpu(), gw.cpu()
    h, w, labels = h.detach().cpu(), w.detach().cpu(), labels.cpu()
    torch.testing.assert_close(logps.double(), ref, rtol=0, atol=atol)
    torch.testing.assert_close(gh.double(), gh64, rtol=0, atol=gatol)
    torch.testing.assert_close(gw.double(), gw64, rtol=0, atol=gatol)
    if dtype == torch.bfloat16:
        # no worse than the usual bf16 path (bf16 logits, fp32 log_softmax)
        usual = torch.log_softmax((h @ w.T).float(), -1).gather(
            -1, labels.clamp(min=0)[..., None]).squeeze(-1).mul(labels != -100).sum(-1)
        assert (logps.double() - ref).abs().max() <= 1.5 * (usual.double() - ref).abs().max() + 1e-3


def test_no_grad_keeps_nothing_for_backward():
    h, w, labels = odd_batch()
    saved = []

    def pack(t):
        saved.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.no_grad():
            out, _ = sequence_logps(h, w, labels, chunk_size=4)
        assert saved == [] and out.grad_fn is None and not out.requires_grad
        out, _ = sequence_logps(h, w, labels, chunk_size=4)  # with grad: saves its inputs
        assert saved and out.grad_fn is not None


@pytest.mark.parametrize("device", DEVICES)
def test_weight_grad_summed_in_the_weights_dtype_stays_near_the_fp32_accumulator(device):
    # 120 tokens in 8 chunks: weight_grad_acc="param" rounds the bf16 running sum once per
    # chunk; its error against fp64 stays within a few bf16 steps of the fp32 accumulator's.
    h, w, labels = odd_batch(torch.bfloat16, B=4, T=40, H=32, V=300, seed=2)
    h, w, labels = h.detach().to(device), w.detach().to(device), labels.to(device)
    B = labels.shape[0] // 2
    ref = torch.zeros(B, device=device)
    gw = {}
    for acc in ("fp32", "param"):
        for name, fn in (("logps", lambda w_: sequence_logps(h, w_, labels, 16,
                                                            weight_grad_acc=acc)[0].sum()),
                         ("dpo", lambda w_: fused_dpo_loss_from_hidden(
                             h, w_, labels, ref, ref, 0.5, chunk_size=16,
                             weight_grad_acc=acc)[0])):
            w_ = w.clone().requires_grad_()
            gw[name, acc] = torch.autograd.grad(fn(w_), w_)[0].cpu().double()
            assert gw[name, acc].dtype == torch.float64 and gw[name, acc].abs().sum() > 0
    h64, w64 = (t.detach().cpu().double() for t in (h, w))
    w64.requires_grad_()
    exact = torch.autograd.grad(oracle(h64, w64, labels.cpu()).sum(), w64)[0]
    err32 = (gw["logps", "fp32"] - exact).abs().max()
    err16 = (gw["logps", "param"] - exact).abs().max()
    assert err16 <= 4 * err32 + 1e-2
    step = exact.abs().max() * 2 ** -8  # one bf16 step at the largest gradient
    for name in ("logps", "dpo"):
        assert (gw[name, "param"] - gw[name, "fp32"]).abs().max() <= 4 * step
    # fp32 weights: the gradient is its own accumulator in both modes, bit for bit
    h32, w32 = h.float(), w.float().requires_grad_()
    a = torch.autograd.grad(sequence_logps(h32, w32, labels, 16)[0].sum(), w32)[0]
    b = torch.autograd.grad(sequence_logps(h32, w32, labels, 16,
                                           weight_grad_acc="param")[0].sum(), w32)[0]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="weight_grad_acc"):
        sequence_logps(h, w, labels, 16, weight_grad_acc="fp16")
    with pytest.raises(ValueError, match="weight_grad_acc"):
        fused_dpo_loss_from_hidden(h, w, labels, ref, ref, 0.5, weight_grad_acc="x")


def test_batch_with_no_counted_token_gives_zero_values_and_gradients():
    # The weight gradient's accumulator is not zeroed up front (the first chunk overwrites
    # it): with no chunk at all it must still come back as zeros, not uninitialised memory.
    h, w, labels = odd_batch()
    labels = torch.full_like(labels, -100)
    h, w = h.requires_grad_(), w.requires_grad_()
    out, counts = sequence_logps(h, w, labels, chunk_size=4)
    out.sum().backward()
    assert counts.sum() == 0 and (out == 0).all()
    assert (h.grad == 0).all() and (w.grad == 0).all()
    if labels.shape[0] % 2 == 0:
        h.grad = w.grad = None
        B = labels.shape[0] // 2
        loss, _ = fused_dpo_loss_from_hidden(h, w, labels, torch.zeros(B), torch.zeros(B), 0.1,
                                             chunk_size=4)
        loss.backward()
        assert (h.grad == 0).all() and (w.grad == 0).all()


def test_bad_shapes_and_chunk_raise():
    h, w, labels = odd_batch()
    with pytest.raises(ValueError, match="labels"):
        sequence_logps(h, w, labels[:, :-1])
    with pytest.raises(ValueError, match="chunk_size"):
        sequence_logps(h, w, labels, chunk_size=0)


def tiny_llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=80, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
                      attn_implementation="eager")
    return LlamaForCausalLM(cfg).double()


def batch(B=3, T=10, seed=0, V=80):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    att = torch.ones(B, T, dtype=torch.long)
    att[1, -3:] = 0
    loss = torch.zeros(B, T, dtype=torch.long)
    loss[:, 4:] = 1
    return {"input_ids": ids, "attention_mask": att, "loss_mask": loss * att}


def usual_logps(model, b):
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    labels = b["input_ids"][:, 1:].masked_fill(b["loss_mask"][:, 1:] == 0, -100)
    logp = torch.log_softmax(logits[:, :-1], -1)
    return (logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * (labels != -100)).sum(-1)


@pytest.mark.parametrize("tied", [True, False])
def test_model_sequence_logps_matches_full_logits_and_all_param_grads(tied):
    model = tiny_llama(tied)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    b = batch()
    logps, counts = model_sequence_logps(model, **b, chunk_size=4)
    assert counts.tolist() == [6, 3, 6]
    logps.sum().backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = usual_logps(model, b)
    ref.sum().backward()
    torch.testing.assert_close(logps, ref, rtol=0, atol=1e-10)
    for n, p in model.named_parameters():
        torch.testing.assert_close(fused[n], p.grad, rtol=0, atol=1e-10, msg=n)


@pytest.mark.parametrize("loss_type,ls,beta", [("sigmoid", 0.0, 0.1), ("sigmoid", 0.2, 0.5),
                                               ("ipo", 0.0, 0.1), ("hinge", 0.0, 0.02)])
def test_fused_dpo_loss_matches_usual_path(loss_type, ls, beta):
    model = tiny_llama(tied=True)
    chosen, rejected = batch(2, 10, seed=1), batch(2, 7, seed=2)
    ref_c, ref_r = torch.tensor([-20.0, -25.0]), torch.tensor([-30.0, -18.0])
    loss, m = fused_dpo_loss(model, chosen, rejected, ref_c, ref_r, beta, loss_type, ls,
                             chunk_size=6)
    loss.backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    pc, pr = usual_logps(model, chosen), usual_logps(model, rejected)
    rc, rr = ref_c.double(), ref_r.double()
    if loss_type == "ipo":  # IPO works on length-normalised log-probs
        nc, nr = (x["loss_mask"][:, 1:].sum(1).clamp(min=1) for x in (chosen, rejected))
        pc, pr, rc, rr = pc / nc, pr / nr, rc / nc, rr / nr
    ref, ref_m = dpo_loss(pc, pr, rc, rr, beta, loss_type, ls)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-7)
    for k, v in ref_m.items():
        assert m[k].item() == pytest.approx(v.item(), rel=1e-7, abs=1e-10), k
    assert abs(ref.item()) > 0  # the case exercises a non-zero gradient
    # HF's eager attention takes its softmax in fp32, and chosen+rejected run as one padded
    # batch here but separately in the reference: fp32-level differences are expected.
    for n, p in model.named_parameters():
        scale = p.grad.abs().max().item()
        torch.testing.assert_close(fused[n], p.grad, rtol=1e-5, atol=1e-6 * scale + 1e-12, msg=n)


def test_fused_dpo_gradcheck_float64_with_chunks_splitting_pairs():
    g = torch.Generator().manual_seed(5)
    h = torch.randn(6, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 9, (6, 5), generator=g)
    labels[1, :3] = -100
    labels[4] = -100
    rc, rr = -torch.rand(3, generator=g) * 10, -torch.rand(3, generator=g) * 10
    assert torch.autograd.gradcheck(
        lambda h, w: fused_dpo_loss_from_hidden(h, w, labels, rc, rr, 0.3, chunk_size=3)[0], (h, w))


@pytest.mark.parametrize("loss_type,ls", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0),
                                          ("hinge", 0.0)])
def test_fused_dpo_matches_usual_path_with_many_groups_of_pairs(loss_type, ls):
    B, T, V, beta, chunk = 12, 10, 11, 0.5, 10
    # Tokens per row; chosen rows 4 and 8 and rejected rows 2, 5 and 8 fully masked (pair 8
    # has none). Chunk 10 packs the pairs into groups of 1, 3, 2, 1, 2, 1, 1, 1 pairs.
    counts = [6, 3, 2, 1, 0, 2, 9, 4, 0, 3, 5, 1] + [4, 2, 0, 2, 3, 0, 1, 4, 0, 2, 5, 7]
    g = torch.Generator().manual_seed(11)
    h = torch.randn(2 * B, T, 4, generator=g, dtype=torch.float64)
    w = torch.randn(V, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (2 * B, T), generator=g)
    for row, n in enumerate(counts):
        labels[row, :T - n] = -100
    assert [b - a for a, b in pair_groups(counts, B, chunk)] == [1, 3, 2, 1, 2, 1, 1, 1]
    lengths = torch.tensor(counts).clamp(min=1) if loss_type == "ipo" else torch.ones(2 * B)
    with torch.no_grad():  # references near the policy: margins either side of hinge's kink
        lp = oracle(h, w, labels)
    rc = lp[:B] + torch.rand(B, generator=g, dtype=torch.float64) * 6 - 3
    rr = lp[B:] + torch.rand(B, generator=g, dtype=torch.float64) * 6 - 3

    def run(fused):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        if fused:
            loss, m = fused_dpo_loss_from_hidden(hh, ww, labels, rc, rr, beta, loss_type, ls,
                                                 chunk_size=chunk)
        else:
            lp = oracle(hh, ww, labels) / lengths
            loss, m = dpo_loss(lp[:B], lp[B:], rc / lengths[:B], rr / lengths[B:], beta,
                               loss_type, ls)
            m["logps/chosen"], m["logps/rejected"] = lp[:B].mean(), lp[B:].mean()
        return loss, m, *torch.autograd.grad(loss, [hh, ww])
    loss, m, gh, gw = run(fused=True)
    ref_loss, ref_m, ref_gh, ref_gw = run(fused=False)
    assert ref_gw.abs().max() > 1e-2  # a case with a real gradient
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
    for k, v in ref_m.items():
        torch.testing.assert_close(m[k], v.detach(), rtol=1e-12, atol=1e-12, msg=k)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("inputs_on", ["host", "device"])  # on the host: no device sync to plan
def test_fused_dpo_from_hidden_matches_fp64_usual_path_in_bf16(device, inputs_on):
    g = torch.Generator().manual_seed(7)
    h = torch.randn(4, 24, 64, generator=g) / 64 ** 0.25
    w = torch.randn(500, 64, generator=g) / 64 ** 0.25
    labels = torch.randint(0, 500, (4, 24), generator=g)
    labels[:, :8] = -100
    rc, rr = torch.tensor([-60.0, -70.0]), torch.tensor([-65.0, -62.0])

    def grads(h, w, fused):
        h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
        if fused:
            to = h.device if inputs_on == "device" else "cpu"
            loss = fused_dpo_loss_from_hidden(h, w, labels.to(to), rc.to(to), rr.to(to), 0.1,
                                              chunk_size=24)[0]
        else:
            lp = oracle(h, w, labels)
            loss = dpo_loss(lp[:2], lp[2:], rc.double(), rr.double(), 0.1)[0]
        return (loss.detach().cpu().double(),
                *(t.cpu().double() for t in torch.autograd.grad(loss, [h, w])))
    want = grads(h.double(), w.double(), fused=False)
    got = grads(h.to(device, torch.bfloat16), w.to(device, torch.bfloat16), fused=True)
    for a, b, tol in zip(got, want, (5e-3, 2e-3, 2e-3)):
        torch.testing.assert_close(a, b, rtol=0, atol=tol)


def test_bench_quick_json_reports_tiny_errors():
    out = subprocess.run([sys.executable, "-m", "reclaif.cli", "bench", "logprobs", "--quick",
                          "--json"], capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(out.stdout)
    assert report["benchmark"] == "logprobs" and report["results"]
    for r in report["results"]:
        for row in (r, r["dpo"]):
            assert set(row) >= {"max_abs_err", "grad_max_abs_err", "peak_mem_ratio", "time_ratio"}
            assert row["max_abs_err"] < 1e-3 and row["grad_max_abs_err"] < 1e-4
            assert row["peak_mem_ratio"] > 0 and row["time_ratio"] > 0


def test_under_bf16_autocast_fp32_weights_get_the_bf16_kernels_gradient_for_each_weight_grad_acc():
    # The torch engine's bf16: fp32 master weights under torch.autocast. The kernel computes
    # as on bf16 weights, and weight_grad_acc decides how the weight gradient sums over chunks
    # exactly as it does there (fp32 accumulator or bf16 running sum): honoured, not ignored.
    h, w, labels = odd_batch(torch.float32, B=4, T=40, H=32, V=300, seed=3)
    h, w = h.detach(), w.detach()
    B = labels.shape[0] // 2
    ref = torch.zeros(B)
    fns = {"logps": lambda h_, w_, acc: sequence_logps(h_, w_, labels, 16,
                                                       weight_grad_acc=acc)[0].sum(),
           "dpo": lambda h_, w_, acc: fused_dpo_loss_from_hidden(
               h_, w_, labels, ref, ref, 0.5, chunk_size=16, weight_grad_acc=acc)[0]}
    for name, fn in fns.items():
        got, want = {}, {}
        for acc in ("fp32", "param"):
            w32 = w.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = fn(h, w32, acc)
            got[acc] = torch.autograd.grad(out, w32)[0]
            assert got[acc].dtype == torch.float32
            w16 = w.bfloat16().requires_grad_()
            want[acc] = torch.autograd.grad(fn(h.bfloat16(), w16, acc), w16)[0]
            assert torch.equal(got[acc].bfloat16(), want[acc]), (name, acc)
        assert not torch.equal(got["fp32"], got["param"]), name  # the choice makes a difference
