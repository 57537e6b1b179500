"""S-DPO (dpo.loss_type: sdpo): the softmax loss over a group's rejected answers
(losses.sdpo_losses) and its packed forward (train/groups.py), where each group runs as one row
[prompt | chosen | rejected_1 | ...] and every answer sees the prompt and itself only. Loss,
rewards and every parameter's gradient equal a plain PyTorch implementation (each answer its own
row, full logits, log_softmax, the formula), and at two answers per group the project's pairwise
sigmoid DPO. Groups: real LastFM sample prompts, the offline teacher's answer as chosen and
permutations of its ranking as rejected."""
from __future__ import annotations

import importlib.util
import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reclaif.bench.peer import reordered
from reclaif.config_load import load_config
from reclaif.data import load_examples, load_items
from reclaif.llm.models import build_tiny_model, load_tokenizer
from reclaif.prompts import render_recommender
from reclaif.teacher import OfflineTeacher
from reclaif.train import groups as groups_mod
from reclaif.train.data import collate_pairs, pad_batch
from reclaif.train.fused_dpo import fused_dpo_loss, fused_dpo_loss_from_hidden
from reclaif.train.groups import (PADDING, collate_groups, encode_group, fused_sdpo_loss,
                                  group_logps, pack_groups)
from reclaif.train.losses import check_dpo_args, dpo_loss_grad, dpo_losses, sdpo_losses

# MAX_LEN: encode_group never cuts a prompt (the sample's are up to ~475 tokens here) and the
# offline teacher's answers take up to 128 (reclaif/teacher.py), so 640 keeps every answer whole.
# Cut shorter, the answers end inside their ~50-token "Key Preferences" preamble, before the
# ranking that tells them apart: a group of identical answers has an exactly zero S-DPO gradient
# (the loss depends only on reward differences) and the gradient checks compare fp32 noise.
BETA, TOP_K, MAX_LEN, CHUNK = 0.5, 3, 640, 64
SIZES = [4, 2, 3]  # answers per group: groups of different sizes, rows of different lengths


# ---------------------------------------------------------------- the loss alone

def test_one_rejected_answer_is_the_sigmoid_dpo_loss():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(16, generator=g, dtype=torch.float64) * 5 for _ in range(4))
    want, w_c, w_r = dpo_losses(pc, pr, rc, rr, 0.3, "sigmoid")
    got, g_c, g_r = sdpo_losses(pc, pr[:, None], rc, rr[:, None], 0.3,
                                torch.ones(16, 1, dtype=torch.bool))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_c, w_c)
    torch.testing.assert_close(g_r[:, 0], w_r)


def test_hand_computed_group_and_padding_changes_nothing():
    # rewards: chosen 0.5*(-1+2)=0.5; rejected 0.5*(-3+2)=-0.5 and 0.5*(-2+2)=0
    pc, rc = torch.tensor([-1.0]), torch.tensor([-2.0])
    pr, rr = torch.tensor([[-3.0, -2.0]]), torch.tensor([[-2.0, -2.0]])
    want = torch.log1p(torch.exp(torch.tensor(-1.0)) + torch.exp(torch.tensor(-0.5)))
    loss, r_c, r_r = sdpo_losses(pc, pr, rc, rr, 0.5, torch.ones(1, 2, dtype=torch.bool))
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert r_c.tolist() == [0.5] and r_r.tolist() == [[-0.5, 0.0]]
    # a padded slot (any value, even inf) is ignored and gets no gradient
    pr_pad = torch.tensor([[-3.0, -2.0, float("inf")]], requires_grad=True)
    padded, _, r_pad = sdpo_losses(pc, pr_pad, rc, torch.tensor([[-2.0, -2.0, 7.0]]), 0.5,
                                   torch.tensor([[True, True, False]]))
    assert padded.item() == pytest.approx(want.item(), rel=1e-6) and r_pad[0, 2] == 0
    padded.sum().backward()
    assert pr_pad.grad[0, 2] == 0 and torch.isfinite(pr_pad.grad).all()


def test_large_rewards_stay_finite():
    pc = torch.tensor([0.0, 0.0], requires_grad=True)
    pr = torch.tensor([[5e4, -5e4], [-5e4, -5e4]], requires_grad=True)
    loss, _, _ = sdpo_losses(pc, pr, torch.zeros(2), torch.zeros(2, 2), 1.0,
                             torch.ones(2, 2, dtype=torch.bool))
    loss.sum().backward()
    assert loss[0].item() == pytest.approx(5e4) and loss[1].item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()


def test_a_group_without_rejected_answer_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"groups \[1\] have no rejected answer"):
        sdpo_losses(torch.zeros(2), torch.zeros(2, 2), torch.zeros(2), torch.zeros(2, 2), 0.1,
                    torch.tensor([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="rejected_mask"):
        sdpo_losses(torch.zeros(2), torch.zeros(2, 2), torch.zeros(2), torch.zeros(2, 2), 0.1,
                    torch.ones(2, 3, dtype=torch.bool))


def test_pairwise_paths_refuse_sdpo_by_name():
    assert load_config(overrides=["dpo.loss_type=sdpo"]).dpo.loss_type == "sdpo"
    with pytest.raises(ValueError, match="loss over answer groups"):
        check_dpo_args(0.1, "sdpo", 0.0)
    with pytest.raises(ValueError, match="loss over answer groups"):
        dpo_losses(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), 0.1, "sdpo")
    with pytest.raises(ValueError, match="loss over answer groups"):
        dpo_loss_grad(torch.zeros(1), 0.1, "sdpo")
    with pytest.raises(ValueError, match="loss over answer groups"):  # the fused pair kernel
        fused_dpo_loss_from_hidden(torch.zeros(2, 3, 4), torch.zeros(5, 4),
                                   torch.zeros(2, 3, dtype=torch.long), torch.zeros(1),
                                   torch.zeros(1), 0.1, "sdpo")


# ---------------------------------------------------------------- real groups, tiny model

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("sdpo") / "tiny", tie=False)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return load_tokenizer(tiny_dir)


def lastfm_groups(tokenizer, sizes: list[int]) -> list[list[dict]]:
    """Encoded groups from the bundled LastFM sample: chosen = the offline teacher's answer,
    rejected = other orders of its ranking (reversed first). Every answer is whole (see MAX_LEN),
    so the answers of a group differ in the tokens the loss counts."""
    examples, items = load_examples("sample"), load_items("sample")
    teacher = OfflineTeacher(items, TOP_K)
    orders = [o for o in itertools.permutations(range(TOP_K))][::-1][:-1]  # no identity
    out = []
    for e, n in zip(examples, sizes):
        good = teacher.respond(e)
        answers = [good] + [reordered(good, orders[j]) for j in range(n - 1)]
        assert len(set(answers)) == n
        rows = encode_group(tokenizer, render_recommender(e, items, TOP_K), answers, MAX_LEN)
        whole = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers]
        assert [sum(r["loss_mask"]) for r in rows] == whole, (e.id, whole, MAX_LEN)
        out.append(rows)
    return out


def load_model(tiny_dir, attn: str = "sdpa", checkpointing: bool = False) -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_dir, attn_implementation=attn,
                                             torch_dtype=torch.float32)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def plain_logps(model, rows: dict) -> torch.Tensor:
    """Each answer its own row: full logits, log_softmax, the answer tokens' log-probs summed."""
    logits = model(input_ids=rows["input_ids"], attention_mask=rows["attention_mask"]).logits
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = logp.gather(2, rows["input_ids"][:, 1:, None]).squeeze(2)
    keep = (rows["loss_mask"][:, 1:] * rows["attention_mask"][:, 1:]).bool()
    return (tok * keep).sum(1)


def plain_sdpo(model, batch: dict, ref: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The formula written out per group: -log sigmoid(-log sum_j exp(beta*(r_j - r_w)))."""
    logps = plain_logps(model, batch["answers"])
    losses, chosen, rejected, margins = [], [], [], []
    start = 0
    for n in batch["sizes"]:
        r = BETA * (logps[start:start + n] - ref[start:start + n])
        losses.append(-F.logsigmoid(-torch.logsumexp(r[1:] - r[0], 0)))
        chosen.append(r[0].item())
        rejected += r[1:].tolist()
        margins += (r[0] - r[1:]).tolist()
        start += n
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    metrics = {"loss": mean([x.item() for x in losses]), "rewards/chosen": mean(chosen),
               "rewards/rejected": mean(rejected), "rewards/margins": mean(margins),
               "rewards/accuracies": mean([float(m > 0) for m in margins])}
    return torch.stack(losses).mean(), metrics


def run_step(model, fn) -> tuple[float, dict, dict]:
    model.zero_grad(set_to_none=True)
    loss, metrics = fn(model)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return loss.item(), {k: float(v) for k, v in metrics.items()}, grads


def assert_same_step(a, b, ref: torch.Tensor) -> None:
    # Tolerances from fp32's spacing at the size of the sums both paths form: a reward is
    # beta * (a sum of ~100 log-probs near -11 each, up to ~-1300, less the reference), summed
    # in another order and with each token's log-softmax computed another way (chunked kernel vs
    # log_softmax), so the two agree to about one fp32 spacing at that size (measured: 1.2e-4 on
    # a log-prob sum near -1100; in float64 the two paths agree to 4e-13). Every gradient is
    # scaled by the loss's derivative, a softmax of those rewards, so it carries the same
    # relative error (measured: up to 1.4e-4 of a parameter's largest entry). 8 spacings leave
    # room for both; a leaked mask is off by far more (test_an_answer_seeing_...).
    # `ref`: the reference log-probs, the policy's own +- noise, so of the sums' size.
    tol = 8 * BETA * torch.finfo(torch.float32).eps * ref.abs().max().item()
    (loss_a, m_a, g_a), (loss_b, m_b, g_b) = a, b
    assert loss_a == pytest.approx(loss_b, abs=tol)
    for k in m_b:
        assert m_a[k] == pytest.approx(m_b[k], rel=1e-6, abs=tol), k
    for n, g in g_b.items():
        scale = g.abs().max().item()
        assert scale > 0, n  # every parameter gets a gradient to compare
        torch.testing.assert_close(g_a[n], g, rtol=1e-3, atol=tol * scale,
                                   msg=lambda m, n=n: f"{n}: {m}")


def reference(model, batch) -> torch.Tensor:
    """Reference log-probs apart from the policy's, so the loss is not at its starting value."""
    with torch.no_grad():
        lp = plain_logps(model, batch["answers"])
    return lp + torch.randn(lp.shape, generator=torch.Generator().manual_seed(1)) * 4


def fused(batch, ref):
    return lambda m: fused_sdpo_loss(m, batch, ref, BETA, chunk_size=CHUNK, kernel="torch")


def plain(batch, ref):
    return lambda m: plain_sdpo(m, batch, ref)


@pytest.fixture(scope="module")
def batch(tokenizer):
    return collate_groups(lastfm_groups(tokenizer, SIZES), tokenizer.pad_token_id)


def test_packed_row_layout(batch):
    rows = pack_groups(batch["answers"], batch["sizes"])
    a = batch["answers"]
    P = int((a["loss_mask"][0].cumsum(0) == 0).sum())
    lengths = [int(a["attention_mask"][i].sum()) - P for i in range(4)]  # group 0's answers
    seg = rows["segment"][0].tolist()
    assert seg[:P + sum(lengths)] == [0] * P + sum(([k + 1] * n for k, n in enumerate(lengths)), [])
    assert set(seg[P + sum(lengths):]) <= {PADDING}
    # every answer's positions continue from the prompt, as in its own row
    at = P + lengths[0] + lengths[1]
    assert rows["position_ids"][0, at:at + lengths[2]].tolist() == list(range(P, P + lengths[2]))
    # answer 2's tokens are predicted by the last prompt position, then by its own positions
    L, flat = rows["input_ids"].shape[1], rows["input_ids"].flatten()
    assert rows["gather"][2, 0].item() == P - 1
    assert rows["gather"][2, 1].item() == at
    got = rows["labels"][2][rows["labels"][2] != -100]
    assert got.tolist() == a["input_ids"][2, P:P + lengths[2]].tolist()
    assert flat[rows["gather"][2, 1:len(got)]].tolist() == got[:-1].tolist()
    counted = rows["labels"][5] != -100  # answers of other lengths pad the rest
    assert (rows["gather"][5][counted] // L == 1).all()  # row 5 is group 1's second answer


def test_answers_with_different_prompts_are_refused(batch):
    answers = {k: v.clone() for k, v in batch["answers"].items()}
    answers["input_ids"][1, 3] += 1
    with pytest.raises(ValueError, match="group 0's answer 1 starts with another prompt"):
        pack_groups(answers, batch["sizes"])
    with pytest.raises(ValueError, match="sizes"):
        pack_groups(batch["answers"], [4, 2, 2])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_sdpo_step_equals_plain_pytorch(tiny_dir, batch, attn):
    model = load_model(tiny_dir, attn)
    ref = reference(model, batch)
    got, want = run_step(model, fused(batch, ref)), run_step(model, plain(batch, ref))
    assert abs(want[1]["rewards/margins"]) > 1e-2  # a real loss, away from log N
    assert_same_step(got, want, ref)


def test_sdpo_with_gradient_checkpointing_equals_plain_pytorch(tiny_dir, batch):
    model = load_model(tiny_dir)
    ref = reference(model, batch)
    want = run_step(model, plain(batch, ref))
    assert_same_step(run_step(load_model(tiny_dir, checkpointing=True), fused(batch, ref)), want,
                     ref)


def test_reference_pass_is_the_plain_log_probs(tiny_dir, batch):
    model = load_model(tiny_dir).eval()
    with torch.no_grad():
        got, counts = group_logps(model, batch, chunk_size=CHUNK)
        want = plain_logps(model, batch["answers"])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    a = batch["answers"]
    assert counts.tolist() == (a["loss_mask"][:, 1:] * a["attention_mask"][:, 1:]).sum(1).tolist()


def test_an_answer_seeing_another_answer_breaks_the_equality(tiny_dir, batch, monkeypatch):
    # The tests above must be able to fail: with a plain causal mask over the packed row each
    # rejected answer also attends to the answers before it.
    model = load_model(tiny_dir)
    ref = reference(model, batch)
    want = run_step(model, plain(batch, ref))

    def leaky(segment, dtype):
        seen = torch.ones(segment.shape[1], segment.shape[1], dtype=torch.bool).tril()
        mask = torch.zeros(segment.shape[0], *seen.shape, dtype=dtype)
        return mask.masked_fill_(~seen, torch.finfo(dtype).min)[:, None]

    monkeypatch.setattr(groups_mod, "shared_prompt_mask", leaky)
    leaked = run_step(model, fused(batch, ref))
    with pytest.raises(AssertionError):
        assert_same_step(leaked, want, ref)
    assert leaked[1]["rewards/rejected"] != pytest.approx(want[1]["rewards/rejected"], rel=1e-3)
    assert leaked[1]["rewards/chosen"] == pytest.approx(want[1]["rewards/chosen"], abs=1e-4)


@pytest.mark.parametrize("shared", [True, False])
def test_two_answers_per_group_is_the_pairwise_sigmoid_dpo_step(tiny_dir, tokenizer, shared):
    encoded = lastfm_groups(tokenizer, [2, 2, 2])
    batch = collate_groups(encoded, tokenizer.pad_token_id)
    model = load_model(tiny_dir)
    ref = reference(model, batch)
    pairs = collate_pairs([{"example_id": str(i), "chosen": c, "rejected": r}
                           for i, (c, r) in enumerate(encoded)], tokenizer.pad_token_id)
    got = run_step(model, fused(batch, ref))
    want = run_step(model, lambda m: fused_dpo_loss(
        m, pairs["chosen"], pairs["rejected"], ref[0::2], ref[1::2], BETA, "sigmoid",
        chunk_size=CHUNK, kernel="torch", shared_prompt=shared))
    assert abs(want[1]["rewards/margins"]) > 1e-2
    assert_same_step(got, want, ref)


def test_encode_group_gives_every_answer_the_same_prompt(tokenizer, batch):
    rows = lastfm_groups(tokenizer, [3])[0]
    prompts = [r["input_ids"][:r["loss_mask"].index(1)] for r in rows]
    assert prompts[0] == prompts[1] == prompts[2]
    assert all(len(r["input_ids"]) <= MAX_LEN for r in rows)
    assert pad_batch(rows, 0)["input_ids"].shape[0] == 3
    with pytest.raises(ValueError, match="a chosen and a rejected"):
        encode_group(tokenizer, "p", ["only one"], MAX_LEN)


# ---------------------------------------------------------------- ZeRO-3 on CPU

ZERO3_WORKER = Path(__file__).with_name("zero3_sdpo_worker.py")


def _zero3_worker_module():
    spec = importlib.util.spec_from_file_location("zero3_sdpo_worker", ZERO3_WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory) -> dict:
    """One torchrun of tests/zero3_sdpo_worker.py for the ZeRO-3 tests below (its start is
    most of their cost)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path_factory.mktemp("zero3-sdpo") / "results.pt"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(port),
                           str(ZERO3_WORKER), "--out", str(out), "--deadline", "230"],
                          env=env, capture_output=True, text=True, timeout=240,
                          cwd=ZERO3_WORKER.parents[1])
    assert proc.returncode == 0, f"ZeRO-3 worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return torch.load(out)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_zero3_gradients_equal_single_process(zero3_run):
    # Two gloo ranks under DeepSpeed ZeRO-3 (tests/zero3_sdpo_worker.py): the packed forward's
    # 4D mask through a partitioned model, the kernel on a gathered lm_head, accumulation 2.
    got = zero3_run
    want = _zero3_worker_module().reference(tied=True)
    assert got["losses"] == pytest.approx(want["losses"], abs=1e-5)
    assert want["grads"]["model.embed_tokens.weight"].abs().max() > 1e-3
    assert set(got["grads"]) == set(want["grads"])
    for name, g in want["grads"].items():
        torch.testing.assert_close(got["grads"][name], g, rtol=0, atol=1e-5, msg=name)
    torch.testing.assert_close(got["lm_head_after"], want["lm_head_after"], rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_zero3_group_reference_logps_reach_rank0_complete_and_in_order(zero3_run):
    # compute_group_reference_logps over two ZeRO-3 ranks: five groups of 2-4 answers split
    # 3 + 2 (rank 1 runs a padding record, dropped), gathered to rank 0; the rows equal the
    # one-rank pass's, one per group, in the input's order; rank 1 gets None.
    worker = _zero3_worker_module()
    on_rank0, on_rank1 = zero3_run["reference_rows"]
    assert on_rank1 is None
    with torch.no_grad():
        want = worker.reference_rows(worker.tiny_llama(True))
    groups = worker.reference_groups()
    assert [r["example_id"] for r in want] == [g["example_id"] for g in groups]
    assert [len(r["answers"]) for r in want] == worker.REF_SIZES
    assert [r["example_id"] for r in on_rank0] == [r["example_id"] for r in want]
    for got, ref, group in zip(on_rank0, want, groups):
        assert got["answer_tokens"] == ref["answer_tokens"] == [
            sum(a["loss_mask"]) for a in group["answers"]]
        assert got["answers"] == pytest.approx(ref["answers"], abs=1e-5), got["example_id"]
    sums = [x for r in want for x in r["answers"]]
    assert len(set(sums)) == len(sums)  # distinct sums: a reordered row would not pass


# ---------------------------------------------------------------- the bench (issue 32 item 3)

@pytest.mark.slow
def test_bench_sdpo_runs_both_variants_and_the_group_runs_fewer_tokens(capsys):
    from reclaif.bench.sdpo import run

    assert run(quick=True, as_json=True, groups=1) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])  # after any library's log line on stdout
    assert report["optimizer_steps"] == {"sdpo": 1, "pairwise": 3}
    (p,), (lengths,) = report["prompt_tokens"], report["answer_tokens"]
    assert report["tokens_run"] == {"sdpo": p + sum(lengths),
                                    "pairwise": 3 * p + 3 * lengths[0] + sum(lengths[1:])}
    for v in ("sdpo", "pairwise"):
        assert report["seconds"][v] > 0 and report["peak_gib"][v] > 0
