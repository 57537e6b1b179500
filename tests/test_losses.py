"""DPO (paper Eq. 2), IPO, hinge, cDPO label smoothing and SFT (Eq. 1): hand-computed values,
TRL's published formulas, gradients, and clear errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reclaif.train.losses import dpo_loss, dpo_loss_grad, dpo_losses, sft_loss

# One pair: policy chosen -1, rejected -3; reference -2 for both.
# log-ratio chosen = +1, rejected = -1, so h = 2.
PC, PR, RC, RR = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))


def test_sigmoid_loss_matches_hand_computed_value_and_rewards():
    loss, m = dpo_loss(PC, PR, RC, RR, beta=0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-6)  # -log sigma(0.5*2)
    assert m["rewards/chosen"].item() == pytest.approx(0.5)
    assert m["rewards/rejected"].item() == pytest.approx(-0.5)
    assert m["rewards/margins"].item() == pytest.approx(1.0)
    assert m["rewards/accuracies"].item() == 1.0
    assert m["loss"].item() == pytest.approx(loss.item())


def test_label_smoothing_mixes_in_the_flipped_label():
    loss, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)
    expected = 0.9 * math.log1p(math.exp(-1.0)) + 0.1 * math.log1p(math.exp(1.0))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_ipo_is_squared_distance_to_half_inverse_beta():
    loss, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="ipo")
    assert loss.item() == pytest.approx((2.0 - 1.0) ** 2)
    loss, _ = dpo_loss(PC, PR, RC, RR, beta=0.25, loss_type="ipo")
    assert loss.item() == pytest.approx((2.0 - 2.0) ** 2)


def test_hinge_is_zero_past_the_margin_and_linear_before():
    assert dpo_loss(PC, PR, RC, RR, beta=0.5, loss_type="hinge")[0].item() == 0.0
    assert dpo_loss(PC, PR, RC, RR, beta=0.25, loss_type="hinge")[0].item() == pytest.approx(0.5)


def _trl_reference(pc, pr, rc, rr, beta, loss_type, ls):
    """The formulas as TRL's DPOTrainer documents them (written from the docs, not copied)."""
    logits = (pc - pr) - (rc - rr)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - ls) - F.logsigmoid(-beta * logits) * ls
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * logits)
    return losses.mean(), beta * (pc - rc), beta * (pr - rr)


@pytest.mark.parametrize("loss_type,ls", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0),
                                          ("hinge", 0.0)])
def test_matches_trl_formulas_on_random_batches(loss_type, ls):
    g = torch.Generator().manual_seed(3)
    pc, pr, rc, rr = (-torch.rand(16, generator=g, dtype=torch.float64) * 50 for _ in range(4))
    loss, m = dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type=loss_type, label_smoothing=ls)
    ref, r_c, r_r = _trl_reference(pc, pr, rc, rr, 0.1, loss_type, ls)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    assert m["rewards/chosen"].item() == pytest.approx(r_c.mean().item(), rel=1e-12)
    assert m["rewards/margins"].item() == pytest.approx((r_c - r_r).mean().item(), rel=1e-12)
    assert m["rewards/accuracies"].item() == pytest.approx((r_c > r_r).double().mean().item())


def test_sigmoid_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    dpo_loss(pc, pr, RC, RR, beta=0.5)[0].backward()
    # dL/dpc = -beta * sigmoid(-beta*h)
    assert pc.grad.item() == pytest.approx(-0.5 * torch.sigmoid(torch.tensor(-1.0)).item())
    assert pr.grad.item() == pytest.approx(-pc.grad.item())


@pytest.mark.parametrize("loss_type,ls,beta", [("sigmoid", 0.0, 0.3), ("sigmoid", 0.2, 0.5),
                                               ("ipo", 0.0, 0.25), ("hinge", 0.0, 0.5),
                                               ("hinge", 0.0, 0.25)])
def test_closed_form_gradient_is_autograds_wrt_the_margin(loss_type, ls, beta):
    g = torch.Generator().manual_seed(4)
    # margins of both signs, and hinge's kink (beta * h == 1 exactly) with points either side
    kink = 1.0 / beta
    h = torch.cat([torch.randn(64, generator=g, dtype=torch.float64) * 4 / beta,
                   torch.tensor([0.0, kink, kink - 1e-9, kink + 1e-9, 3 * kink],
                                dtype=torch.float64)])
    # pc = h with the other three 0 makes the margin (pc - rc) - (pr - rr) exactly h
    pc, pr = h.clone().requires_grad_(), torch.zeros_like(h, requires_grad=True)
    losses, _, _ = dpo_losses(pc, pr, torch.zeros_like(h), torch.zeros_like(h), beta,
                              loss_type, ls)
    want_c, want_r = torch.autograd.grad(losses.sum(), [pc, pr])
    got = dpo_loss_grad(h, beta, loss_type, ls)
    assert got.dtype == torch.float64 and want_c.abs().max() > 0.1 * beta
    torch.testing.assert_close(got, want_c, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(-got, want_r, rtol=1e-12, atol=1e-15)
    if loss_type == "hinge":
        assert got[-4].item() == 0.0 and got[-3].item() == -beta  # at the kink, just before
        assert set(got.tolist()) == {0.0, -beta}


def test_reference_log_probs_get_no_gradient_and_may_live_on_cpu():
    # A reference computed with grad enabled (a forgotten no_grad) must not train its model:
    # the loss treats the reference log-probs as constants, as the fused kernel does.
    ref_model = torch.nn.Linear(3, 2).double()
    ref = ref_model(torch.ones(1, 3, dtype=torch.float64))[0] - 2.0  # fp64, on the CPU
    assert ref.requires_grad
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    loss, _ = dpo_loss(pc, pr, ref[:1], ref[1:], beta=0.1)
    loss.backward()
    assert loss.dtype == torch.float32 and pc.grad is not None and pr.grad is not None
    assert all(p.grad is None for p in ref_model.parameters())


@pytest.mark.parametrize("kwargs,match", [
    ({"loss_type": "kto"}, "loss_type"),
    ({"beta": 0.0}, "beta"),
    ({"label_smoothing": 0.5}, "label_smoothing"),
    ({"loss_type": "ipo", "label_smoothing": 0.1}, "sigmoid"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    args = {"beta": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        dpo_loss(PC, PR, RC, RR, **args)


def test_sft_loss_is_mean_nll_per_response_token():
    logps = torch.tensor([-2.0, -4.0])
    counts = torch.tensor([1, 3])
    assert sft_loss(logps, counts).item() == pytest.approx(6.0 / 4.0)


def test_sft_loss_of_a_batch_without_response_tokens_is_zero_not_nan():
    loss = sft_loss(torch.zeros(2, requires_grad=True), torch.zeros(2, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
