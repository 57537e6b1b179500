"""SFT's shared prompt head (sft.prompt_forward: auto or shared; reclaif.train.shared_head): the
tokens every row of a micro-batch begins with run once, each row's remainder over their keys
and values, and the step's loss and every parameter's gradient equal those of the whole rows
within fp32 rounding. Through the recipe's own SFTMethod on a tiny Llama, rows of different
lengths (so each pads differently), eager and sdpa attention."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_shared_prompt import PAD, V, tiny_llama  # noqa: E402

from reclaif.config import SFTConfig  # noqa: E402
from reclaif.config_load import load_config  # noqa: E402
from reclaif.errors import ConfigError  # noqa: E402
from reclaif.train import shared_head  # noqa: E402
from reclaif.train.sft import SFTMethod, shares_head  # noqa: E402
from reclaif.train.shared_head import common_head, head_support  # noqa: E402
from reclaif.train.strategy import Strategy  # noqa: E402

HEAD = 7
TAILS = [(4, 5), (9, 3), (2, 8)]  # (prompt tokens after the head, answer tokens) per row


def rows(head: int = HEAD, tails=TAILS, seed: int = 0) -> list[dict]:
    """Rows as encode_sft makes them: the prompt (head + the row's own part), then the answer,
    the loss on the answer only."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randint(1, V, (head,), generator=g).tolist()
    out = []
    for tail, answer in tails:
        prompt = common + torch.randint(1, V, (tail,), generator=g).tolist()
        out.append({"input_ids": prompt + torch.randint(1, V, (answer,), generator=g).tolist(),
                    "loss_mask": [0] * len(prompt) + [1] * answer})
    return out


def step(model, examples: list[dict], shared: bool):
    """One SFT micro-batch of all `examples` as the recipe runs it: (loss, every parameter's
    gradient, the shapes the embedding saw, the method)."""
    cfg = SFTConfig(device="cpu", logprob_chunk=8)
    strategy = Strategy(cfg).setup()
    strategy.prepare(model, 1)
    method = SFTMethod(strategy, cfg, examples, PAD, shared)
    idx = list(range(len(examples)))
    shapes: list[tuple] = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda mod, args, out: shapes.append(tuple(args[0].shape)))
    model.zero_grad(set_to_none=True)
    method.begin_step([idx])
    loss = method.loss(idx)
    strategy.backward(loss, True)
    hook.remove()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}, shapes, method


def assert_same_step(a, b) -> None:
    (loss_a, g_a, *_), (loss_b, g_b, *_) = a, b
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for n, g in g_b.items():
        scale = g.abs().max().item()
        assert scale > 0, n  # every parameter gets a gradient to compare
        torch.testing.assert_close(g_a[n], g, rtol=1e-4, atol=1e-5 * scale, msg=n)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_head_step_equals_the_whole_rows(attn):
    model, examples = tiny_llama(attn), rows()
    shared, whole = step(model, examples, True), step(model, examples, False)
    assert_same_step(shared, whole)
    longest = max(len(r["input_ids"]) for r in examples)
    assert whole[2] == [(3, longest)]
    assert shared[2] == [(1, HEAD), (3, longest - HEAD)]  # the head ran once
    assert shared[3].head_tokens_saved == 2 * HEAD


def test_rows_without_a_common_head_run_whole():
    examples = rows()
    examples[1]["input_ids"][0] += 1  # no token in common
    assert common_head(examples) == 0
    assert common_head(rows()[:1]) == 0  # a single row: nothing to share
    one = rows()
    one[1]["input_ids"][1] += 1  # a 1-token head: not worth a second forward
    assert common_head(one) == 0
    shared = step(tiny_llama("sdpa"), examples, True)
    assert shared[2] == [(3, max(len(r["input_ids"]) for r in examples))]
    assert_same_step(shared, step(tiny_llama("sdpa"), examples, False))


def test_the_head_stops_before_each_rows_last_prompt_token():
    # row 1 begins with all of row 0 (prompt and answer): the common prefix runs into row 0's
    # answer, but row 0's last prompt token predicts its first answer token, so it stays out
    a, b = rows(tails=[(2, 3), (3, 4)])
    b = {"input_ids": a["input_ids"] + b["input_ids"],
         "loss_mask": [0] * len(a["input_ids"]) + b["loss_mask"]}
    prompt_a = a["loss_mask"].index(1)
    assert common_head([a, b]) == prompt_a - 1
    model = tiny_llama("eager")
    assert_same_step(step(model, [a, b], True), step(model, [a, b], False))


def test_a_head_cut_off_from_the_gradient_breaks_the_equality(monkeypatch):
    # The equality above must be able to fail: with the head's keys and values detached the
    # loss is the same, but no gradient flows back into the head's computation.
    model, examples = tiny_llama("sdpa"), rows()
    whole = step(model, examples, False)

    def detached(cache, n):
        for layer in cache.layers:
            layer.keys = layer.keys.detach().expand(n, -1, -1, -1)
            layer.values = layer.values.detach().expand(n, -1, -1, -1)

    monkeypatch.setattr(shared_head, "_expand", detached)
    cut = step(model, examples, True)
    assert cut[0] == pytest.approx(whole[0], rel=1e-5)
    with pytest.raises(AssertionError):
        assert_same_step(cut, whole)


def test_auto_shares_the_head_where_it_can_and_shared_elsewhere_is_an_error():
    assert load_config(None).sft.prompt_forward == "auto"
    assert shares_head(SFTConfig(), tiny_llama("sdpa"))
    assert shares_head(SFTConfig(prompt_forward="shared"), tiny_llama("eager"))
    assert not shares_head(SFTConfig(prompt_forward="separate"), tiny_llama("sdpa"))
    checkpointed = tiny_llama("sdpa", checkpointing=True)
    assert "gradient checkpointing" in head_support(checkpointed)
    assert not shares_head(SFTConfig(), checkpointed)
    with pytest.raises(ConfigError, match="sft.prompt_forward"):
        shares_head(SFTConfig(prompt_forward="shared"), checkpointed)
    for overrides in (["recommender.attn_implementation=flash_attention_2"],
                      ["sft.gradient_checkpointing=true"]):
        load_config(None, overrides)  # auto: SFT falls back to whole rows
        with pytest.raises(ConfigError, match="sft.prompt_forward"):
            load_config(None, ["sft.prompt_forward=shared", *overrides])


def test_a_sliding_window_cache_is_refused():
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=8,
                        attn_implementation="sdpa")
    assert "not plain full attention" in head_support(MistralForCausalLM(cfg))
