"""Training data: chat-templated encoding, loss on the response only, prompts never cut (long
answers lose their end; too little room is refused), padding, and a batch order that a resumed run reproduces exactly."""
from __future__ import annotations

import pytest

from reclaif.errors import DataError
from reclaif.llm.models import default_model_dir, load_tokenizer
from reclaif.records import PreferencePair
from reclaif.train.data import (BatchPlan, collate_pairs, encode, encode_pairs, encode_sft,
                                pad_batch, render_prompt)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(str(default_model_dir()))


def test_loss_mask_covers_the_response_and_eos_only(tok):
    enc = encode(tok, "Recommend 3 artists.", "1. Tricky", max_length=512)
    rendered = render_prompt(tok, "Recommend 3 artists.")
    prompt_ids = tok(rendered, add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert enc["input_ids"][:n] == prompt_ids
    assert enc["loss_mask"][:n] == [0] * n
    assert enc["loss_mask"][n:] == [1] * (len(enc["input_ids"]) - n)
    assert tok.decode(enc["input_ids"][n:]) == "1. Tricky" + tok.eos_token


def test_a_prompt_is_never_cut_a_long_answer_loses_its_end(tok):
    prompt = "history: " + "; ".join(f"artist {i}" for i in range(20))
    answer = "1. Moby - " + " ".join(f"reason {i}" for i in range(200))
    full = encode(tok, prompt, answer, max_length=10_000)
    p_len = full["loss_mask"].index(1)
    cut = encode(tok, prompt, answer, max_length=p_len + 40)
    assert cut["input_ids"] == full["input_ids"][:p_len + 40]  # the prompt whole, then the answer
    assert sum(cut["loss_mask"]) == 40 and tok.eos_token_id not in cut["input_ids"][p_len:]


def test_a_prompt_that_leaves_too_little_room_is_refused_by_name(tok):
    long_prompt = "history: " + "; ".join(f"artist {i}" for i in range(300))
    p_len = len(tok(render_prompt(tok, long_prompt), add_special_tokens=False)["input_ids"])
    with pytest.raises(DataError, match=rf"example u7: prompt {p_len} \+ answer \d+ tokens is "
                                        r"over max_length 64"):
        encode_sft(tok, [{"id": "u7", "prompt": long_prompt, "response": "1. Moby"}], 64)


def _prompt_part(e: dict) -> list[int]:
    return [t for t, m in zip(e["input_ids"], e["loss_mask"]) if not m]


def test_a_pair_longer_than_max_length_keeps_one_prompt_and_cuts_the_answers(tok):
    prompt = "history: " + "; ".join(f"artist {i}" for i in range(20))
    short, long = "1. Moby", "1. Moby - " + " ".join(f"reason {i}" for i in range(200))
    p_len = len(tok(render_prompt(tok, prompt), add_special_tokens=False)["input_ids"])
    (e,) = encode_pairs(tok, [PreferencePair("x", prompt, long, short)], p_len + 40)
    c, r = e["chosen"], e["rejected"]
    assert _prompt_part(c) == _prompt_part(r)  # the same context for both answers
    assert len(_prompt_part(c)) == p_len  # the prompt is whole: the long answer was cut
    assert len(c["input_ids"]) == p_len + 40 and sum(c["loss_mask"]) == 40
    assert tok.decode([t for t, m in zip(r["input_ids"], r["loss_mask"]) if m]) == \
        short + tok.eos_token


def test_a_pair_whose_prompt_alone_fills_max_length_is_refused_not_cut(tok):
    prompt = "history: " + "; ".join(f"artist {i}" for i in range(300))
    pair = PreferencePair("x9", prompt, "1. Moby " * 30, "1. Tricky")
    with pytest.raises(DataError, match="example x9: prompt .* over max_length 64"):
        encode_pairs(tok, [pair], 64)


def test_padding_masks_pads_out_of_attention_and_loss(tok):
    a = encode(tok, "p", "short", 128)
    b = encode(tok, "p", "a somewhat longer answer", 128)
    batch = pad_batch([a, b], tok.pad_token_id)
    assert batch["input_ids"].shape == (2, len(b["input_ids"]))
    assert int(batch["attention_mask"][0].sum()) == len(a["input_ids"])
    assert int(batch["loss_mask"][0].sum()) == sum(a["loss_mask"])


def test_pairs_collate_with_their_reference_logps(tok):
    enc = encode_pairs(tok, [PreferencePair("x", "p", "good", "bad"),
                             PreferencePair("y", "q", "fine", "worse answer")], 128)
    for e, (c, r) in zip(enc, [(-1.0, -2.0), (-3.0, -4.0)]):
        e["ref_chosen"], e["ref_rejected"] = c, r
    batch = collate_pairs(enc, tok.pad_token_id)
    assert batch["example_ids"] == ["x", "y"]
    assert batch["ref_rejected"].tolist() == [-2.0, -4.0]
    assert batch["chosen"]["input_ids"].shape[0] == 2


def test_batch_plan_splits_ranks_and_resumes_the_same_order():
    plans = [BatchPlan(11, 2, world_size=2, rank=r, grad_accum=2, seed=3) for r in range(2)]
    assert plans[0].steps_per_epoch == 2 and plans[0].micro_per_epoch == 4
    seen = [i for p in plans for b in p.micro_batches(0) for i in b]
    assert sorted(set(seen)) == list(range(11))  # every example, the last batch wrapped
    assert plans[0].micro_batches(0, skip=2) == plans[0].micro_batches(0)[2:]
    assert plans[0].micro_batches(1) != plans[0].micro_batches(0)  # reshuffled per epoch
    assert BatchPlan(11, 2, 2, 0, 2, seed=3).micro_batches(1) == plans[0].micro_batches(1)
