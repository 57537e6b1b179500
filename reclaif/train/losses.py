"""The training objectives of the paper: SFT (Eq. 1) and DPO (Eq. 2) with its IPO and hinge
variants and cDPO label smoothing; S-DPO's softmax loss over several rejected answers.

The DPO functions take sequence log-probs that the caller computed (reclaif.train.logprobs);
they know nothing of models. Formulas follow the DPO, IPO and cDPO papers as TRL's DPOTrainer
states them, so metrics read the same as in TRL logs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from reclaif.config import DPOConfig, choices

LOSS_TYPES = choices(DPOConfig, "loss_type")
# The group loss: one chosen answer against several rejected ones (sdpo_losses), not a pair.
GROUP_LOSS_TYPES = ("sdpo",)
PAIR_LOSS_TYPES = tuple(t for t in LOSS_TYPES if t not in GROUP_LOSS_TYPES)
# What a DPO step logs, pairs and groups alike (dpo_metrics' or sdpo_metrics', and the mean
# sequence log-probs).
METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")


def check_dpo_args(beta: float, loss_type: str, label_smoothing: float) -> None:
    """The pairwise losses' arguments. sdpo is refused here, by name, so that no pairwise path
    (dpo_losses, the fused pair kernel, the trainer) silently computes another loss for it."""
    if loss_type in GROUP_LOSS_TYPES:
        raise ValueError(f"dpo loss_type '{loss_type}' is a loss over answer groups "
                         "(reclaif.train.groups.fused_sdpo_loss); the pairwise DPO path takes "
                         f"{list(PAIR_LOSS_TYPES)}")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"dpo loss_type '{loss_type}' is not one of {list(LOSS_TYPES)}")
    if beta <= 0:
        raise ValueError(f"dpo beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"dpo label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing (cDPO) applies to the sigmoid loss only, not {loss_type}")


def dpo_losses(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor,
               ref_rejected: Tensor, beta: float, loss_type: str = "sigmoid",
               label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair losses [B] and the implicit rewards beta*(log pi - log pi_ref) of chosen and
    rejected [B] (detached). All inputs are [B] sequence log-probs (sums; for IPO the caller
    passes length-normalised log-probs, as the IPO paper and TRL do)."""
    check_dpo_args(beta, loss_type, label_smoothing)
    # fp32 at least (fp64 stays fp64 for gradcheck)
    acc = torch.promote_types(policy_chosen.dtype, torch.float32)
    pc, pr = policy_chosen.to(acc), policy_rejected.to(acc)
    # The reference is a constant of the objective (the fused kernel gives it no gradient
    # either): a reference computed with grad enabled must not train the reference model.
    rc, rr = (r.detach().to(pc.device, acc) for r in (ref_chosen, ref_rejected))
    # h = log-ratio of chosen minus log-ratio of rejected: the one quantity every variant uses.
    h = (pc - rc) - (pr - rr)
    if loss_type == "sigmoid":
        # cDPO: the label is wrong with probability label_smoothing.
        losses = (-F.logsigmoid(beta * h) * (1.0 - label_smoothing)
                  - F.logsigmoid(-beta * h) * label_smoothing)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:  # hinge (SLiC)
        losses = torch.relu(1.0 - beta * h)
    return losses, (beta * (pc - rc)).detach(), (beta * (pr - rr)).detach()


def dpo_loss_grad(h: Tensor, beta: float, loss_type: str = "sigmoid",
                  label_smoothing: float = 0.0) -> Tensor:
    """The derivative of dpo_losses' per-pair loss wrt h = (pc - rc) - (pr - rr), in closed
    form and in h's dtype: dloss/dpc = dloss/dh and dloss/dpr = -dloss/dh. For callers that form
    gradients themselves (reclaif.train.fused_dpo) and would otherwise need an autograd call
    per chunk. At hinge's kink (beta * h == 1) it is 0, as autograd's relu gives."""
    check_dpo_args(beta, loss_type, label_smoothing)
    if loss_type == "sigmoid":
        # d/dx -logsigmoid(x) = -sigmoid(-x); as few ops as it takes (one kernel launch each)
        g = torch.sigmoid(h * -beta).mul_(-beta * (1.0 - label_smoothing))
        if label_smoothing:
            g = g.add_(torch.sigmoid(h * beta), alpha=beta * label_smoothing)
        return g
    if loss_type == "ipo":
        return 2.0 * (h - 1.0 / (2.0 * beta))
    # hinge: the same expression as dpo_losses, so the kink falls on the same h
    return (1.0 - beta * h > 0).to(h.dtype) * -beta


def dpo_metrics(losses: Tensor, rewards_chosen: Tensor, rewards_rejected: Tensor) -> dict[str, Tensor]:
    """TRL-named means over the pairs, as detached 0-dim fp32 tensors (all-reduce friendly)."""
    margins = rewards_chosen - rewards_rejected
    return {
        "loss": losses.detach().mean(),
        "rewards/chosen": rewards_chosen.mean(),
        "rewards/rejected": rewards_rejected.mean(),
        "rewards/margins": margins.mean(),
        "rewards/accuracies": (rewards_chosen > rewards_rejected).float().mean(),
    }


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor,
             ref_rejected: Tensor, beta: float, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean DPO loss over the pairs (paper Eq. 2 for loss_type="sigmoid") and its metrics:
    loss, rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies."""
    losses, r_c, r_r = dpo_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                  beta, loss_type, label_smoothing)
    return losses.mean(), dpo_metrics(losses, r_c, r_r)


def sdpo_losses(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor,
                ref_rejected: Tensor, beta: float, rejected_mask: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
    """S-DPO (Chen et al. 2024): per-group losses [G],
    -log sigmoid(-log sum_j exp(r_j - r_w)) over the group's rejected answers j, with the
    implicit rewards r = beta*(log pi - log pi_ref); and the rewards of chosen [G] and rejected
    [G, N-1] (detached; 0 where rejected_mask is False). Inputs: chosen log-prob sums [G],
    rejected [G, N-1], rejected_mask [G, N-1] bool (groups of different sizes: False on the
    padding); every group needs one rejected answer at least. With one rejected answer per group
    it is dpo_losses(..., "sigmoid")."""
    if beta <= 0:
        raise ValueError(f"sdpo beta must be > 0, got {beta}")
    G = policy_chosen.shape[0]
    if (policy_chosen.dim() != 1 or policy_rejected.shape != rejected_mask.shape
            or policy_rejected.dim() != 2 or policy_rejected.shape[0] != G
            or ref_chosen.shape != policy_chosen.shape or ref_rejected.shape != policy_rejected.shape):
        raise ValueError(f"sdpo_losses: chosen [G] and rejected, its reference and rejected_mask "
                         f"[G, N-1], got chosen {tuple(policy_chosen.shape)}, rejected "
                         f"{tuple(policy_rejected.shape)}, ref_chosen {tuple(ref_chosen.shape)}, "
                         f"ref_rejected {tuple(ref_rejected.shape)}, mask "
                         f"{tuple(rejected_mask.shape)}")
    mask = rejected_mask.to(policy_rejected.device, torch.bool)
    if G and not bool(mask.any(1).all()):
        empty = (~mask.any(1)).nonzero().squeeze(1).tolist()
        raise ValueError(f"sdpo_losses: groups {empty} have no rejected answer")
    acc = torch.promote_types(policy_chosen.dtype, torch.float32)
    pc, pr = policy_chosen.to(acc), policy_rejected.to(acc)
    rc, rr = (r.detach().to(pc.device, acc) for r in (ref_chosen, ref_rejected))
    r_w, r_j = beta * (pc - rc), beta * (pr - rr)
    # masked_fill, not a multiply: -inf drops an entry from logsumexp and gives it no gradient
    # (0 * -inf would be NaN); -log sigmoid(-x) is softplus(x), stable at both ends.
    lse = torch.logsumexp((r_j - r_w[:, None]).masked_fill(~mask, float("-inf")), dim=1)
    losses = F.softplus(lse)
    return losses, r_w.detach(), r_j.detach().masked_fill(~mask, 0.0)


def sdpo_metrics(losses: Tensor, rewards_chosen: Tensor, rewards_rejected: Tensor,
                 rejected_mask: Tensor) -> dict[str, Tensor]:
    """dpo_metrics' names over the groups: rewards/rejected, margins and accuracies are means
    over every (chosen, rejected_j) pair the mask keeps, so one rejected answer per group gives
    dpo_metrics' values."""
    mask = rejected_mask.to(rewards_rejected.device, torch.bool)
    n = mask.sum().clamp(min=1)
    margins = rewards_chosen[:, None] - rewards_rejected
    return {
        "loss": losses.detach().mean(),
        "rewards/chosen": rewards_chosen.mean(),
        "rewards/rejected": rewards_rejected[mask].sum() / n,
        "rewards/margins": margins[mask].sum() / n,
        "rewards/accuracies": (margins[mask] > 0).float().sum() / n,
    }


def sft_loss(logps_sum: Tensor, counts: Tensor) -> Tensor:
    """Mean token negative log-likelihood over all response tokens of the batch (paper Eq. 1):
    -sum(log p) / sum(counts), so long and short answers weigh per token, as in HF's causal LM
    loss. A batch with no response token gives 0 (with a graph) rather than NaN."""
    total = counts.sum().clamp(min=1).to(logps_sum.dtype)
    return -logps_sum.sum() / total
