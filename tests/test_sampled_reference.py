"""Reference log-probs from the sampling pass: in iteration i the reference is the policy that
sampled the answers, so the sums the sampler returns (untempered softmax, exactly the emitted
tokens) stand in for a reference forward; a pair whose tokens or sampler differ is recomputed."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_run import HISTORIES, make_run_dir, prompt  # noqa: E402

from reclaif.atomic import atomic_write_jsonl, read_jsonl
from reclaif.config import LLMSpec
from reclaif.config_load import load_config
from reclaif.llm.hf import HFClient
from reclaif.llm.models import build_tiny_model, load_tokenizer
from reclaif.records import PreferencePair
from reclaif.train.data import encode_pairs
from reclaif.train.dpo import run_dpo
from reclaif.train.reference import compute_reference_logps

TRAIN = ["sft.enabled=false", "dpo.lr=1.0e-3", "dpo.batch_size=3", "dpo.epochs=1",
         "dpo.max_length=160", "dpo.save_every_steps=100"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", tie=False)


@pytest.fixture(scope="module")
def sampled(tiny) -> list[dict]:
    """One pair per history from the tiny policy's own samples, as the pairs phase makes them
    (JSON: each test gets its own copies)."""
    client = HFClient(LLMSpec(model=str(tiny), batch_size=4, device="cpu", dtype="float32"))
    prompts = [prompt(h, c) for h, c, _, _ in HISTORIES]
    outs = client.sample(prompts, n=2, temperature=1.2, top_p=0.9, max_new_tokens=16, seed=1)
    pairs = []
    for k, (p, (a, b)) in enumerate(zip(prompts, outs)):
        row = {"truncated": [a.truncated, b.truncated], "token_ids": [a.token_ids, b.token_ids],
               "logps": [a.logp, b.logp],
               "sampled_by": {"model": str(tiny), "dtype": client.weights_dtype()}}
        pair = PreferencePair(f"ex-{k}", p, a.text, b.text, {"choice": "a"})
        pairs.append(pair.with_samples(row).to_json())
    return pairs


def test_dpo_takes_the_sampling_pass_log_probs_where_the_tokens_are_the_sampled_ones(
        tmp_path, tiny, sampled):
    pairs = [PreferencePair.from_json(p) for p in sampled]
    # falls back: no sampled tokens (an old pairs file) / sampled by another model
    pairs[0] = PreferencePair.from_json({k: v for k, v in pairs[0].to_json().items()
                                         if k in ("example_id", "prompt", "chosen", "rejected",
                                                  "verdict", "chosen_truncated",
                                                  "rejected_truncated")})
    pairs[1].sampled_by = {"model": str(tmp_path / "other"), "dtype": "float32"}
    run = make_run_dir(tmp_path / "run", tiny, TRAIN)
    atomic_write_jsonl(run / "iter-001" / "pairs.jsonl", [p.to_json() for p in pairs])
    metrics = run_dpo(load_config(run / "config.yaml"), run, 1)

    rows = read_jsonl(run / "iter-001" / "ref_logps.jsonl")
    assert [r["source"] for r in rows] == ["forward", "forward"] + ["sampling"] * 4
    assert metrics["reference_from_sampling"] == 4
    # the sampled sums equal a reference forward over the same encoded tokens
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(str(tiny))
    encoded = encode_pairs(tok, pairs, 160)
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    forward = compute_reference_logps(lambda fn, *a: fn(model, *a), encoded, tok.pad_token_id,
                                      3, 64, shared_prompt=True)
    for r, f in zip(rows, forward):
        assert abs(r["chosen"] - f["chosen"]) < 1e-4 and abs(r["rejected"] - f["rejected"]) < 1e-4
        assert (r["chosen_tokens"], r["rejected_tokens"]) == (f["chosen_tokens"],
                                                              f["rejected_tokens"])
    assert metrics["loss_first_step"] == pytest.approx(math.log(2), abs=1e-4)


def test_a_pair_cut_to_max_length_is_not_the_sampled_tokens_and_falls_back(tiny, sampled):
    pairs = [PreferencePair.from_json(p) for p in sampled]
    tok = load_tokenizer(str(tiny))
    whole = encode_pairs(tok, pairs, 160)
    assert all("sampled_ref" in e for e in whole)
    # the sampled ids, not the re-tokenised text: a capped answer has no end of turn
    for p, e in zip(pairs, whole):
        ids = [t for t, m in zip(e["chosen"]["input_ids"], e["chosen"]["loss_mask"]) if m]
        assert ids == p.chosen_ids
    long = pairs[0]
    long.chosen_ids = long.chosen_ids * 10  # an answer longer than max_length leaves it
    p_len = whole[0]["chosen"]["loss_mask"].index(1)
    (cut,) = encode_pairs(tok, [long], p_len + 100)
    assert sum(cut["chosen"]["loss_mask"]) == 100 and "sampled_ref" not in cut
