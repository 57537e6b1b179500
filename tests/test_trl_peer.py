"""The project's DPO numbers equal TRL's DPOTrainer's (trl==1.16.0, the `peer`/`dev` extra) on
one tiny model and one batch of real LastFM pairs: TRL tokenizes the texts and its collator
builds the batch, TRL's own forward (its fused LM head) and `compute_loss` run on it, and the
project's encode_pairs, compute_reference_logps and fused_dpo_loss run on the same pairs.

Where the two define a quantity differently, the test says so and checks the difference:
- cDPO label smoothing: TRL 1.16's `sigmoid` loss ignores `label_smoothing` (it feeds its
  `robust` rDPO and `exo_pair` losses only); the project's sigmoid + label_smoothing is cDPO,
  (1-e)*-logsig(b*h) + e*-logsig(-b*h). With robust = ((1-e)*-logsig(b*h) - e*-logsig(-b*h)) /
  (1-2e), cDPO = 2(1-e)*sigmoid - (1-2e)*robust: TRL computes the right side from its own
  loss_type/loss_weights and it must equal the project's cDPO, values and gradients.
- IPO: both divide each log-ratio by its answer's token count (TRL: completion_mask.sum(1); the
  project: the shifted labels it counts, the same tokens when nothing is truncated), so the IPO
  loss and gradients are checked for plain equality. The metrics differ: the project reports
  IPO's rewards/* and logps/* from the length-normalised log-probs its loss uses, TRL from the
  sums; the test checks the project's against TRL's per-sequence values divided by length.
- RPO: the project's rpo_alpha is TRL's loss_type [sigmoid, sft] with loss_weights [1, alpha]
  (the "sft" term: the mean NLL over the batch's chosen tokens); checked for plain equality.
- Truncation (not exercised: every pair fits max_length): TRL's collator cuts the sequence's end
  (`keep_start`), the project cuts the prompt's beginning and keeps the answer.
"""
from __future__ import annotations

import copy

import pytest
import torch

from reclaif.bench.peer import lastfm_pairs
from reclaif.pipeline.export import standard_rows
from reclaif.train.data import collate_pairs, encode_pairs
from reclaif.train.fused_dpo import fused_dpo_loss
from reclaif.train.reference import compute_reference_logps

BETA, EPS, MAX_LENGTH, CHUNK = 0.1, 0.2, 1024, 256  # chunk 256: several pair groups


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from reclaif.llm.models import build_tiny_model, load_tokenizer

    path = build_tiny_model(tmp_path_factory.mktemp("peer") / "tiny")
    tok = load_tokenizer(str(path))
    pairs = lastfm_pairs(2, top_k=2)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = copy.deepcopy(policy)  # a reference apart from the policy: log-ratios are not zero
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return {"tok": tok, "pairs": pairs, "policy": policy, "ref": ref,
            "encoded": encode_pairs(tok, pairs, MAX_LENGTH), "tmp": tmp_path_factory.mktemp("trl")}


def trainer_for(peer, loss_type, loss_weights=None, label_smoothing=0.0):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(peer["tmp"]), beta=BETA, loss_type=loss_type,
                     loss_weights=loss_weights, label_smoothing=label_smoothing,
                     max_length=MAX_LENGTH, per_device_train_batch_size=len(peer["pairs"]),
                     bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                     disable_tqdm=True)
    return DPOTrainer(model=peer["policy"], ref_model=peer["ref"], args=args,
                      train_dataset=Dataset.from_list(standard_rows(peer["tok"], peer["pairs"])),
                      processing_class=peer["tok"])


def trl_batch(trainer):
    ds = trainer.train_dataset
    return trainer.data_collator([ds[i] for i in range(len(ds))])


def reclaif_logps(peer, model):
    rows = compute_reference_logps(lambda fn, *a: fn(model, *a), peer["encoded"],
                                   peer["tok"].pad_token_id, len(peer["encoded"]), CHUNK)
    return (torch.tensor([r["chosen"] for r in rows]), torch.tensor([r["rejected"] for r in rows]))


def grads_of(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out


def trl_loss_and_grads(trainer):
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, trl_batch(trainer))
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.detach(), grads_of(trainer.model, loss), metrics


def per_token_metrics(trainer):
    """TRL's rewards/* and logps/* from its per-sequence log-probs divided by answer length."""
    batch = trl_batch(trainer)
    n = batch["completion_mask"].sum(1).float().chunk(2)
    pc, pr = (lp / k for lp, k in zip(trainer.compute_ref_log_probs(trainer.model, batch), n))
    rc, rr = (lp / k for lp, k in zip(trainer.compute_ref_log_probs(trainer.ref_model, batch), n))
    r_c, r_r = BETA * (pc - rc), BETA * (pr - rr)
    return {"rewards/chosen": r_c.mean().item(), "rewards/rejected": r_r.mean().item(),
            "rewards/margins": (r_c - r_r).mean().item(),
            "rewards/accuracies": (r_c > r_r).float().mean().item(),
            "logps/chosen": pc.mean().item(), "logps/rejected": pr.mean().item()}


def reclaif_loss_and_grads(peer, loss_type, label_smoothing=0.0, rpo_alpha=0.0):
    ref_c, ref_r = reclaif_logps(peer, peer["ref"])
    batch = collate_pairs(peer["encoded"], peer["tok"].pad_token_id)
    peer["policy"].train()
    loss, metrics = fused_dpo_loss(peer["policy"], batch["chosen"], batch["rejected"], ref_c,
                                   ref_r, BETA, loss_type, label_smoothing, chunk_size=CHUNK,
                                   kernel="torch", rpo_alpha=rpo_alpha)
    return loss.detach(), grads_of(peer["policy"], loss), metrics


def assert_grads_equal(got, want, rel=2e-4):
    assert got.keys() == want.keys()
    for name, g in got.items():
        scale = want[name].abs().max().item()
        assert scale > 0, name
        err = (g - want[name]).abs().max().item()
        assert err <= rel * scale, f"{name}: max |diff| {err:.3g} vs max |grad| {scale:.3g}"


def test_trl_tokenizes_the_pairs_into_the_projects_token_ids(peer):
    trainer = trainer_for(peer, "sigmoid")
    for row, enc in zip(trainer.train_dataset, peer["encoded"]):
        for side in ("chosen", "rejected"):
            assert row["prompt_ids"] + row[f"{side}_ids"] == enc[side]["input_ids"]
            assert len(row[f"{side}_ids"]) == sum(enc[side]["loss_mask"])


def test_sequence_logps_equal_trls_forward_on_its_collated_batch(peer):
    trainer = trainer_for(peer, "sigmoid")
    batch = trl_batch(trainer)
    for model in (peer["policy"], peer["ref"]):
        want_c, want_r = trainer.compute_ref_log_probs(model, batch)
        got_c, got_r = reclaif_logps(peer, model)
        torch.testing.assert_close(got_c, want_c, rtol=1e-5, atol=2e-3)
        torch.testing.assert_close(got_r, want_r, rtol=1e-5, atol=2e-3)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_loss_metrics_and_parameter_grads_equal_trls(peer, loss_type):
    want_loss, want_grads, want_m = trl_loss_and_grads(trainer_for(peer, loss_type))
    loss, grads, m = reclaif_loss_and_grads(peer, loss_type)
    assert abs(want_m["rewards/margins"]) > 1e-3  # the reference is not the policy
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-4)
    if loss_type == "ipo":  # the documented difference: per-token metrics (module docstring)
        want_m = per_token_metrics(trainer_for(peer, loss_type))
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
              "logps/chosen", "logps/rejected"):
        assert m[k].item() == pytest.approx(want_m[k], rel=1e-5, abs=2e-4), k
    assert_grads_equal(grads, want_grads)


def test_cdpo_label_smoothing_equals_trls_sigmoid_and_robust_mix(peer):
    # the documented difference (module docstring): cDPO = 2(1-e)*sigmoid - (1-2e)*robust
    mix = trainer_for(peer, ["sigmoid", "robust"], [2 * (1 - EPS), -(1 - 2 * EPS)], EPS)
    want_loss, want_grads, _ = trl_loss_and_grads(mix)
    loss, grads, _ = reclaif_loss_and_grads(peer, "sigmoid", EPS)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-4)
    assert_grads_equal(grads, want_grads)


def test_trls_sigmoid_ignores_label_smoothing_where_the_projects_is_cdpo(peer):
    smoothed, _, _ = trl_loss_and_grads(trainer_for(peer, "sigmoid", label_smoothing=EPS))
    plain, _, _ = reclaif_loss_and_grads(peer, "sigmoid", 0.0)
    cdpo, _, _ = reclaif_loss_and_grads(peer, "sigmoid", EPS)
    torch.testing.assert_close(plain, smoothed, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(cdpo, smoothed, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_rpo_alpha_equals_trls_dpo_plus_sft_loss(peer, loss_type):
    alpha = 0.5
    want_loss, want_grads, _ = trl_loss_and_grads(trainer_for(peer, [loss_type, "sft"],
                                                              [1.0, alpha]))
    loss, grads, _ = reclaif_loss_and_grads(peer, loss_type, rpo_alpha=alpha)
    plain, plain_grads, _ = reclaif_loss_and_grads(peer, loss_type)
    assert (loss - plain).item() > 0.1  # the NLL term is there (chosen tokens' NLL > 0.2)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-4)
    assert_grads_equal(grads, want_grads)
    with pytest.raises(AssertionError):
        assert_grads_equal(plain_grads, want_grads)
