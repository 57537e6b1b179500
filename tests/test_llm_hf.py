"""HFClient on a tiny random Llama with the real tokenizer (fast), checked against transformers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from reclaif.config import LLMSpec
from reclaif.errors import CheckpointError
from reclaif.llm import make_client
from reclaif.llm.base import LLMClient
from reclaif.llm.hf import HFClient
from reclaif.llm.models import build_tiny_model

PROMPTS = ["Recommend one band.", "Which of these artists fits a listener of Depeche Mode, "
           "No Doubt and The Cure best? Give reasons.", "Hi", "List three genres of music please."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    # Untied: a random tied model only echoes its last input token (whitespace here).
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", tie=False)


@pytest.fixture(scope="module")
def client(tiny) -> HFClient:
    return HFClient(LLMSpec(model=str(tiny), batch_size=4, device="cpu"))


def _reference_greedy(client: HFClient, prompt: str, max_new_tokens: int) -> str:
    """Plain transformers on the unpadded chat-templated prompt: what the client must match."""
    ids = client.tokenizer(client.render(prompt), add_special_tokens=False,
                           return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = client.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                    do_sample=False, max_new_tokens=max_new_tokens,
                                    eos_token_id=client.eos_ids,
                                    pad_token_id=client.tokenizer.pad_token_id)
    return client.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_make_client_builds_hf_client_with_protocol(tiny):
    c = make_client(LLMSpec(model=str(tiny), device="cpu"))
    assert isinstance(c, HFClient) and isinstance(c, LLMClient)
    assert c.tokenizer.padding_side == "left"
    assert c.model.config._attn_implementation == "sdpa"


def test_chat_template_wraps_prompt_as_user_turn(client):
    text = client.render("Recommend one band.")
    assert "<|im_start|>user\nRecommend one band.<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_left_padded_batch_matches_unbatched_greedy_in_prompt_order(client):
    out = client.generate(PROMPTS, n=1, temperature=0.0, max_new_tokens=6)
    assert [len(o) for o in out] == [1, 1, 1, 1]
    assert all(o[0] for o in out)  # a real answer each, not an echo of the template
    assert [o[0] for o in out] == [_reference_greedy(client, p, 6) for p in PROMPTS]
    assert client.last_stats.batch_sizes == [4]


def test_batches_of_batch_size_sorted_by_length_pad_little(tiny):
    c = HFClient(LLMSpec(model=str(tiny), batch_size=2, device="cpu"))
    c.generate(PROMPTS, n=1, temperature=0.0, max_new_tokens=2)
    s = c.last_stats
    ids = sorted((c.tokenizer(c.render(p), add_special_tokens=False)["input_ids"]
                  for p in PROMPTS), key=len, reverse=True)
    lens = [len(x) for x in ids]
    assert s.batch_sizes == [2, 2]
    # Sorted batching pads each pair to its own longest prompt, not to the global longest; the
    # prefix a pair shares (the chat template's system turn) is prefilled once.
    shared = [len(os.path.commonprefix([a, b])) for a, b in (ids[:2], ids[2:])]
    assert min(shared) >= 16  # long enough for the loop to prefill it separately
    assert s.padded_prompt_tokens == sum(k + 2 * (n - k) for k, n in zip(shared, lens[::2]))
    assert s.prompt_tokens == sum(lens)
    c.decoder = "generate"
    c.generate(PROMPTS, n=1, temperature=0.0, max_new_tokens=2)
    assert c.last_stats.padded_prompt_tokens == 2 * lens[0] + 2 * lens[2]


def test_n_samples_per_prompt_and_seed_reproducibility(client):
    a = client.generate(PROMPTS[:2], n=3, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=7)
    b = client.generate(PROMPTS[:2], n=3, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=7)
    c = client.generate(PROMPTS[:2], n=3, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=8)
    assert [len(x) for x in a] == [3, 3]
    assert a == b
    assert a != c
    assert len(set(a[0])) > 1  # samples of one prompt differ (a random model is near-uniform)


def test_greedy_n_gives_n_identical_answers(client):
    out = client.generate(["Hi"], n=3, temperature=0.0, max_new_tokens=5)
    assert len(out[0]) == 3 and len(set(out[0])) == 1


def test_stops_at_eos_and_strips_prompt(tiny, client):
    ids = client.tokenizer(client.render("Hi"), add_special_tokens=False,
                           return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        free = client.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     do_sample=False, max_new_tokens=8,
                                     eos_token_id=client.eos_ids,
                                     pad_token_id=client.tokenizer.pad_token_id)[0, ids.shape[1]:]
    stop_token = int(free[3])
    first = free.tolist().index(stop_token)
    model = client.model
    model.generation_config.eos_token_id = [client.tokenizer.eos_token_id, stop_token]
    try:
        c = HFClient(LLMSpec(model=str(tiny), device="cpu"), model=model, tokenizer=client.tokenizer)
        out = c.generate(["Hi"], temperature=0.0, max_new_tokens=8)[0][0]
    finally:
        model.generation_config.eos_token_id = client.tokenizer.eos_token_id
    assert stop_token in c.eos_ids
    assert out == client.tokenizer.decode(free[:first], skip_special_tokens=True).strip()
    assert c.last_stats.generated_tokens == first + 1
    assert "assistant" not in out and "Hi" not in out


def test_sample_flags_an_answer_that_ran_into_max_new_tokens(tiny, client):
    ids = client.tokenizer(client.render("Hi"), add_special_tokens=False,
                           return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        free = client.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     do_sample=False, max_new_tokens=8,
                                     eos_token_id=client.eos_ids,
                                     pad_token_id=client.tokenizer.pad_token_id)[0, ids.shape[1]:]
    stop_token = int(free[3])
    first = free.tolist().index(stop_token)
    model = client.model
    model.generation_config.eos_token_id = [client.tokenizer.eos_token_id, stop_token]
    try:
        c = HFClient(LLMSpec(model=str(tiny), device="cpu"), model=model, tokenizer=client.tokenizer)
        for decoder in ("auto", "generate"):
            c.decoder = decoder
            ended = c.sample(["Hi"], temperature=0.0, max_new_tokens=first + 1)[0][0]
            capped = c.sample(["Hi"], temperature=0.0, max_new_tokens=first)[0][0]
            assert (ended.truncated, capped.truncated) == (False, True), decoder
            assert ended.text == capped.text  # the same tokens: only the stop differs
    finally:
        model.generation_config.eos_token_id = client.tokenizer.eos_token_id


def test_reload_swaps_in_a_new_checkpoint(tmp_path, tiny):
    c = HFClient(LLMSpec(model=str(tiny), device="cpu"))
    before = c.generate(PROMPTS[:2], temperature=0.0, max_new_tokens=6)
    other = build_tiny_model(tmp_path / "other", seed=1, tie=False)
    c.reload(str(other))
    assert c.spec.model == str(other)
    assert c.tokenizer.padding_side == "left"
    assert c.generate(PROMPTS[:2], temperature=0.0, max_new_tokens=6) != before


def test_reload_keeps_tokenizer_when_checkpoint_has_none(tmp_path, tiny):
    import shutil

    c = HFClient(LLMSpec(model=str(tiny), device="cpu"))
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny / f, weights_only / f)
    tok = c.tokenizer
    c.reload(str(weights_only))
    assert c.tokenizer is tok and c.spec.model == str(weights_only)


def test_reload_refuses_a_directory_that_is_not_a_checkpoint(tmp_path, tiny):
    c = HFClient(LLMSpec(model=str(tiny), device="cpu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        c.reload(str(tmp_path / "empty"))


def test_empty_prompt_list(client):
    assert client.generate([], n=2) == []


def test_sampling_bench_reports_both_modes_and_ratio(tiny):
    from reclaif.bench.sampling import bench_prompts, measure

    prompts = bench_prompts(3)
    assert all("Listening History" in p for p in prompts)  # real LastFM recommender prompts
    result = measure(model=str(tiny), prompts=3, batch_size=3, max_new_tokens=3, num_samples=1,
                     with_generate=True)
    batched, single, generate = result["modes"]
    assert (batched["batch_size"], single["batch_size"], generate["batch_size"]) == (3, 1, 3)
    assert result["decoder"] == "reclaif" and result["decoder_speedup_vs_generate"] > 0
    assert generate["prompt_tokens"] == batched["prompt_tokens"]
    assert batched["prompt_tokens"] == single["prompt_tokens"] > 3 * 300
    assert batched["generated_tokens"] > 0 and single["generated_tokens"] > 0
    ratio = batched["tokens_per_s"] / single["tokens_per_s"]  # both rounded to 0.01 in the JSON
    assert result["speedup"] == pytest.approx(ratio, rel=0.05)


def test_own_decode_loop_drops_finished_rows_without_changing_the_others(client):
    """Rows that hit EOS leave the batch (the cache is compacted); every other row's greedy
    answer must be what it was with all rows kept, i.e. transformers' generate's."""
    from reclaif.llm import decode

    ids = [client.tokenizer(client.render(p), add_special_tokens=False)["input_ids"]
           for p in PROMPTS]
    enc = client.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    with torch.inference_mode():
        free = client.model.generate(**enc, do_sample=False, max_new_tokens=12, eos_token_id=None,
                                     pad_token_id=client.tokenizer.pad_token_id)
    free = free[:, enc["input_ids"].shape[1]:].tolist()
    # stop tokens met at different steps in different rows: rows end one by one
    eos = sorted({free[0][2], free[1][6]})
    expected = [row[:next((k + 1 for k, t in enumerate(row) if t in eos), len(row))]
                for row in free]
    assert len({len(e) for e in expected}) > 1
    assert decode.supports(client.model)
    with torch.inference_mode():
        got = decode.sample(client.model, ids, 1, 0.0, 1.0, 12, eos,
                            client.tokenizer.pad_token_id)
    assert got == expected


def test_shared_prompt_prefix_is_prefilled_once_without_changing_answers(client):
    """The chat template's system turn starts every prompt: prefilled once, then each row's own
    tokens behind left padding; greedy answers equal plain unbatched transformers'."""
    from reclaif.llm import decode

    head = "You recommend music. Answer with one band and one reason, in one line. " * 2
    prompts = [head + p for p in PROMPTS]
    ids = [client.tokenizer(client.render(p), add_special_tokens=False)["input_ids"]
           for p in prompts]
    shared = decode._shared_prefix(ids)
    assert shared > decode.MIN_SHARED_PREFIX + 20
    assert decode._shared_prefix(ids[:1]) == 0
    with torch.inference_mode():
        got = decode.sample(client.model, ids, 2, 0.0, 1.0, 6, client.eos_ids,
                            client.tokenizer.pad_token_id)
    want = [_reference_greedy(client, p, 6) for p in prompts]
    texts = [client.tokenizer.decode([t for t in row if t not in client.eos_ids],
                                     skip_special_tokens=True).strip() for row in got]
    assert texts == [w for w in want for _ in range(2)]


def test_generate_fallback_gives_the_same_greedy_answers(tiny):
    own = HFClient(LLMSpec(model=str(tiny), batch_size=4, device="cpu"))
    hf = HFClient(LLMSpec(model=str(tiny), batch_size=4, device="cpu"))
    hf.decoder = "generate"
    assert own.own_decode_loop
    assert (own.generate(PROMPTS, n=2, temperature=0.0, max_new_tokens=7)
            == hf.generate(PROMPTS, n=2, temperature=0.0, max_new_tokens=7))


def test_nucleus_filter_keeps_the_smallest_set_holding_top_p():
    from transformers.generation.logits_process import TopPLogitsWarper

    from reclaif.llm.decode import _next_tokens

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.manual_seed(0)
    draws = _next_tokens(logits.expand(2000, 4), temperature=1.0, top_p=0.6)
    assert set(draws.tolist()) == {0, 1}  # 0.5 < 0.6, so the second token is needed; not a third
    assert 0.55 < (draws == 0).float().mean().item() < 0.70  # renormalised: 0.5 / 0.8
    assert _next_tokens(logits, temperature=0.0, top_p=0.1).tolist() == [0]
    # the kept set matches transformers' warper on random logits
    g = torch.Generator().manual_seed(1)
    rand = torch.randn(8, 50, generator=g) * 3
    warped = TopPLogitsWarper(0.9)(None, rand.clone())
    for row in range(8):
        keep = set(warped[row].isfinite().nonzero().squeeze(1).tolist())
        torch.manual_seed(row)
        seen = set(_next_tokens(rand[row:row + 1].expand(4000, 50), 1.0, 0.9).tolist())
        assert seen <= keep and len(keep - seen) <= 2  # rare tokens of the set may go unseen


def test_models_with_sliding_window_caches_fall_back_to_generate():
    from transformers import MistralConfig, MistralForCausalLM

    from reclaif.llm import decode

    config = MistralConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                           sliding_window=8)
    assert not decode.supports(MistralForCausalLM(config))
    config.sliding_window = None
    assert decode.supports(MistralForCausalLM(config))


def test_weight_first_output_layer_gives_the_same_logits_and_is_restored(client):
    from reclaif.llm.decode import _lm_head_weight_first

    head = client.model.get_output_embeddings()
    x = torch.randn(16, 1, head.in_features)
    with torch.inference_mode():
        plain = head(x)
        with _lm_head_weight_first(client.model):
            assert "forward" in vars(head)
            fast = head(x)
    assert "forward" not in vars(head)
    assert fast.shape == plain.shape
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def _recomputed_logp(client: HFClient, prompt: str, answer: list[int]) -> float:
    """A reference pass: one unpadded forward over prompt + answer, untempered softmax."""
    ids = client.tokenizer(client.render(prompt), add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids + answer])
    with torch.inference_mode():
        logits = client.model(input_ids=x).logits[0, len(ids) - 1:-1].float()
    return float(logits.log_softmax(-1).gather(1, torch.tensor(answer)[:, None]).sum())


def test_sampled_logps_equal_a_reference_pass_on_the_same_tokens(client):
    # batched, left-padded, a shared prefix, tempered and nucleus-filtered draws: the stored
    # sums are still the policy's own softmax over exactly the emitted tokens
    out = client.sample(PROMPTS, n=2, temperature=1.3, top_p=0.8, max_new_tokens=12, seed=3)
    for prompt, answers in zip(PROMPTS, out):
        for c in answers:
            assert c.token_ids and c.logp is not None
            assert c.truncated == (c.token_ids[-1] not in client.eos_ids)
            assert abs(c.logp - _recomputed_logp(client, prompt, c.token_ids)) < 1e-4
