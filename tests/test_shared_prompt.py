"""The shared-prompt DPO forward (dpo.prompt_forward: shared, the default with eager/sdpa
attention) computes what the separate forward does: each pair as one row [prompt | chosen |
rejected] under a 4D mask (and the head all the pairs' prompts begin with run once for them)
gives the same DPO loss, metrics, parameter gradients and reference log-probs as prompt+chosen
and prompt+rejected run as two rows, within fp32 rounding."""
from __future__ import annotations

import pytest
import torch

from reclaif.config import shares_prompt
from reclaif.config_load import load_config
from reclaif.errors import ConfigError
from reclaif.train import fused_dpo
from reclaif.train.data import CHOSEN, PADDING, PROMPT, REJECTED, collate_pairs, share_prompt
from reclaif.train.fused_dpo import fused_dpo_loss
from reclaif.train.reference import compute_reference_logps

V, PAD = 80, 0
# (prompt, chosen answer, rejected answer) lengths: every row of the batch pads differently
SHAPES = [(9, 4, 6), (5, 7, 2), (12, 3, 3)]


def tiny_llama(attn: str, checkpointing: bool = False) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                      attn_implementation=attn, pad_token_id=PAD)
    model = LlamaForCausalLM(cfg)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def pairs(shapes=SHAPES, seed: int = 0, head: int = 0) -> list[dict]:
    """Encoded pairs as encode_pair makes them: one prompt, loss on each answer only; with
    `head`, every prompt begins with the same `head` tokens (the template's instructions)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randint(1, V, (head,), generator=g).tolist()
    out = []
    for i, (p, a, b) in enumerate(shapes):
        prompt, chosen, rejected = (torch.randint(1, V, (n,), generator=g).tolist()
                                    for n in (p, a, b))
        p, prompt = p + head, common + prompt
        out.append({"example_id": str(i),
                    "chosen": {"input_ids": prompt + chosen, "loss_mask": [0] * p + [1] * a},
                    "rejected": {"input_ids": prompt + rejected, "loss_mask": [0] * p + [1] * b},
                    "ref_chosen": -3.0 * a + i, "ref_rejected": -3.5 * b})
    return out


def step(model, batch, shared: bool, loss_type: str) -> tuple[float, dict, dict]:
    model.zero_grad(set_to_none=True)
    loss, metrics = fused_dpo_loss(model, batch["chosen"], batch["rejected"], batch["ref_chosen"],
                                   batch["ref_rejected"], beta=0.5, loss_type=loss_type,
                                   chunk_size=8, shared_prompt=shared)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return loss.item(), {k: v.item() for k, v in metrics.items()}, grads


def assert_same_step(a, b) -> None:
    (loss_a, m_a, g_a), (loss_b, m_b, g_b) = a, b
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for k in m_b:
        assert m_a[k] == pytest.approx(m_b[k], rel=1e-5, abs=1e-6), k
    for n, g in g_b.items():
        scale = g.abs().max().item()
        assert scale > 0, n  # every parameter gets a gradient to compare
        torch.testing.assert_close(g_a[n], g, rtol=1e-4, atol=1e-5 * scale, msg=n)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_shared_prompt_step_equals_the_separate_one(attn, loss_type):
    model, batch = tiny_llama(attn), collate_pairs(pairs(), PAD)
    shared, separate = step(model, batch, True, loss_type), step(model, batch, False, loss_type)
    assert abs(shared[1]["rewards/margins"]) > 1e-3  # refs apart from the policy: a real loss
    assert_same_step(shared, separate)


def embedded(model) -> list[tuple]:
    """The input shapes the model's embedding sees from now on: which forwards ran."""
    shapes: list[tuple] = []
    model.get_input_embeddings().register_forward_hook(
        lambda mod, args, out: shapes.append(tuple(args[0].shape)))
    return shapes


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_pairs_common_head_runs_once_for_the_same_step(attn):
    # every prompt begins with the same 6 tokens: they run once for the 3 pairs, the packed
    # rows over their keys and values (reclaif.train.shared_head), for the same step
    model, batch = tiny_llama(attn), collate_pairs(pairs(head=6), PAD)
    separate = step(model, batch, False, "sigmoid")
    shapes = embedded(model)
    shared = step(model, batch, True, "sigmoid")
    assert shapes == [(1, 6), (3, 9 + 4 + 6)]  # the head, then the pairs' rows after it
    assert_same_step(shared, separate)


def test_shared_prompt_with_gradient_checkpointing_equals_the_plain_separate_step():
    # under checkpointing the pairs' common head is not run apart (the layers drop the cache)
    batch = collate_pairs(pairs(seed=3, head=6), PAD)
    plain = step(tiny_llama("sdpa"), batch, False, "sigmoid")
    model = tiny_llama("sdpa", checkpointing=True)
    shapes = embedded(model)
    assert_same_step(step(model, batch, True, "sigmoid"), plain)
    assert len(shapes) == 1  # one forward of the packed rows, head included


def test_rejected_answer_seeing_the_chosen_one_breaks_the_equality(monkeypatch):
    # The test above must be able to fail: a mask where the rejected answer also attends to
    # the chosen one (a causal mask over the whole packed row) changes the rejected log-probs.
    model, batch = tiny_llama("sdpa"), collate_pairs(pairs(), PAD)
    separate = step(model, batch, False, "sigmoid")

    def leaky(segment, dtype):
        seen = torch.ones(segment.shape[1], segment.shape[1], dtype=torch.bool).tril()
        mask = torch.zeros(segment.shape[0], *seen.shape, dtype=dtype)
        return mask.masked_fill_(~seen, torch.finfo(dtype).min)[:, None]

    monkeypatch.setattr(fused_dpo, "shared_prompt_mask", leaky)
    leaked = step(model, batch, True, "sigmoid")
    assert leaked[1]["logps/rejected"] != pytest.approx(separate[1]["logps/rejected"], rel=1e-3)
    assert leaked[1]["logps/chosen"] == pytest.approx(separate[1]["logps/chosen"], rel=1e-5)


@pytest.mark.parametrize("head", [0, 6])
def test_shared_reference_logps_equal_the_separate_ones(head):
    model, encoded = tiny_llama("sdpa").eval(), pairs(seed=5, head=head)
    rows = {shared: compute_reference_logps(lambda fn, *a: fn(model, *a), encoded, PAD, 2, 8,
                                            shared_prompt=shared) for shared in (True, False)}
    for a, b in zip(rows[True], rows[False]):
        assert a["chosen_tokens"] == b["chosen_tokens"] and a["rejected_tokens"] == b["rejected_tokens"]
        assert a["chosen"] == pytest.approx(b["chosen"], rel=1e-5)
        assert a["rejected"] == pytest.approx(b["rejected"], rel=1e-5)


def test_packed_row_layout():
    # pair 1 of SHAPES: prompt 5, chosen 7, rejected 2 tokens
    items = pairs()
    rows = share_prompt(**{k: v for k, v in collate_pairs(items, PAD).items()
                           if k in ("chosen", "rejected")})
    assert rows["input_ids"].shape == (3, 9 + 4 + 6)  # the longest packed row
    seg = rows["segment"][1].tolist()
    assert seg == [PROMPT] * 5 + [CHOSEN] * 7 + [REJECTED] * 2 + [PADDING] * 5
    assert rows["position_ids"][1, :14].tolist() == [*range(12), 5, 6]
    ids = items[1]["rejected"]["input_ids"]
    assert rows["input_ids"][1, 12:14].tolist() == ids[5:]
    # rejected row 1 (row B+1): its first token predicted by the last prompt position (4),
    # its second by its first token's position (12); targets as the separate labels
    W = rows["gather"].shape[1]
    assert rows["gather"][3 + 1, :2].tolist() == [1 * 19 + 4, 1 * 19 + 12]
    assert rows["labels"][3 + 1].tolist() == ids[5:] + [-100] * (W - 2)


def test_pairs_with_different_prompts_are_refused():
    items = pairs()
    items[0]["rejected"]["input_ids"][0] += 1
    batch = collate_pairs(items, PAD)
    with pytest.raises(ValueError, match="different prompts"):
        share_prompt(batch["chosen"], batch["rejected"])


def test_auto_shares_the_prompt_except_under_flash_attention_and_shared_there_is_an_error():
    assert shares_prompt("auto", "sdpa") and shares_prompt("auto", "eager")
    assert not shares_prompt("auto", "flash_attention_2")
    assert not shares_prompt("separate", "sdpa")
    assert shares_prompt("shared", "eager")
    assert load_config(None).dpo.prompt_forward == "auto"
    with pytest.raises(ConfigError, match="dpo.prompt_forward"):
        load_config(None, ["dpo.prompt_forward=shared",
                           "recommender.attn_implementation=flash_attention_2"])
    with pytest.raises(ConfigError, match="dpo.prompt_forward"):
        load_config(None, ["dpo.prompt_forward=both"])
