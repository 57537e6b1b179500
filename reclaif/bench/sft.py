"""`reclaif bench sft`: one SFT optimizer step (forward, backward, AdamW) with each micro-batch's
common prompt head run once (sft.prompt_forward: shared) and with every row whole (separate),
side by side in this process, through the recipe's own SFTMethod and Strategy, on the same
model, weights and micro-batches.

The micro-batches are what the LastFM proof run's SFT trains on (configs/lastfm-proof.yaml):
the bundled sample's training prompts rendered hybrid, top 3, the offline teacher's answers,
fitted to max_length 1152, 4 per micro-batch. Their evidence comes from a fitted evidence
directory where given (`evidence_dir`: a run's evidence/full, the proof's SASRec, transitions
and tag overlap), else from transitions and tag overlap fitted here in seconds: SASRec's 9
epochs take many minutes on a CPU, and without its "SASRec #r p%" (2-5 tokens per candidate
line) the prompts are ~100 tokens shorter than the proof's, the head the same. `teacher` takes
a run's own sft/teacher.jsonl rows instead. The default model is the embedded SmolLM2-135M;
--quick a tiny random Llama with its tokenizer and 2 micro-batches of 2.

Each variant steps from the same weights (restored before every step), so their losses must
agree (printed); the variants alternate which goes first in each round, no warm-up (a step
takes tens of seconds on a CPU, the first call's set-up well under one).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from reclaif.atomic import read_jsonl
from reclaif.config import SFTConfig
from reclaif.data import load_examples, load_items
from reclaif.data.interactions import fit_windows
from reclaif.evidence.models import EvidenceModels
from reclaif.llm.models import build_tiny_model, default_model_dir, load_tokenizer
from reclaif.prompts import render_recommender
from reclaif.recommender import fit_answered
from reclaif.teacher import OfflineTeacher
from reclaif.train.data import answer_tokens, encode_sft, prompt_tokens
from reclaif.train.sft import SFTMethod
from reclaif.train.shared_head import common_head
from reclaif.train.strategy import Strategy

MAX_LENGTH, TOP_K = 1152, 3  # the proof config's sft.max_length and data.top_k


def proof_rows(n: int, tokenizer, evidence_dir: str | None = None) -> tuple[list[dict], str]:
    """The first n training prompts of the bundled LastFM sample rendered hybrid with the
    offline teacher's answers, as teacher.jsonl rows; and what their evidence is."""
    items, train = load_items("sample"), load_examples("sample", "train")
    if evidence_dir:
        models = EvidenceModels.load(Path(evidence_dir), items)
        what = f"evidence of {evidence_dir} ({', '.join(models.sources)})"
    else:
        models = EvidenceModels.fit(fit_windows("sample", "train", train), items,
                                    ["transition", "tag_overlap"])
        what = "evidence: transition, tag_overlap fitted here (no SASRec text)"
    examples = train[:n]
    models.prepare(examples)
    examples = [models.annotate(ex, items) for ex in examples]
    examples, answers = fit_answered(
        examples, items, TOP_K, OfflineTeacher(items, TOP_K).respond_many,
        lambda p: len(prompt_tokens(tokenizer, p)), lambda a: len(answer_tokens(tokenizer, a)),
        MAX_LENGTH)
    return [{"id": e.id, "prompt": render_recommender(e, items, TOP_K), "response": a}
            for e, a in zip(examples, answers)], what


def _time_step(method: SFTMethod, strategy: Strategy, idx: list[int]) -> tuple[float, float]:
    t0 = time.perf_counter()
    method.begin_step([idx])
    loss = method.loss(idx)
    strategy.backward(loss, True)
    strategy.step()
    return time.perf_counter() - t0, float(method.scalars()["loss"])


def run(*, quick: bool = False, as_json: bool = False, teacher: str | None = None,
        evidence_dir: str | None = None, rounds: int | None = None) -> int:
    """Prints an SFT step's shared-head and whole-row variants side by side."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    batch, rounds = (2, rounds or 2) if quick else (4, rounds or 2)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(Path(tmp) / "tiny") if quick else default_model_dir()
        tokenizer = load_tokenizer(str(path))
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    label = ("tiny random Llama (49k vocab)" if quick
             else "SmolLM2-135M-Instruct (embedded default)")
    if teacher:
        rows, what = read_jsonl(teacher)[:batch * rounds], f"rows of {teacher}"
    else:
        rows, what = proof_rows(batch * rounds, tokenizer, evidence_dir)
    examples = encode_sft(tokenizer, rows, MAX_LENGTH)
    micro = [list(range(i, i + batch)) for i in range(0, batch * rounds, batch)]
    cfg = SFTConfig(device="cpu", batch_size=batch, lr=1e-6)
    strategy = Strategy(cfg).setup()
    strategy.prepare(model.train(), rounds * 2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    variants = {"separate": False, "shared": True}
    times: dict[str, list[float]] = {v: [] for v in variants}
    losses: dict[str, list[float]] = {v: [] for v in variants}
    for r, idx in enumerate(micro):
        for v in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            model.load_state_dict(state)
            method = SFTMethod(strategy, cfg, examples, tokenizer.pad_token_id, variants[v])
            s, loss = _time_step(method, strategy, idx)
            times[v].append(s)
            losses[v].append(loss)
    heads = [common_head([examples[i] for i in idx]) for idx in micro]
    tokens = sum(len(examples[i]["input_ids"]) for idx in micro for i in idx)
    prompt = [e["loss_mask"].index(1) for e in examples]
    total = {v: sum(ts) for v, ts in times.items()}
    result = {
        "bench": "sft", "model": label, "data": what, "device": "cpu",
        "threads": torch.get_num_threads(), "batch": batch, "micro_batches": len(micro),
        "mean_prompt_tokens": sum(prompt) / len(prompt),
        "mean_answer_tokens": sum(len(e["input_ids"]) for e in examples) / len(examples)
        - sum(prompt) / len(prompt),
        "head_tokens": heads,
        "step_s": {v: total[v] / len(micro) for v in variants},
        "step_times": times,
        "tokens_per_s": {v: tokens / total[v] for v in variants},
        "speedup_shared_vs_separate": total["separate"] / total["shared"],
        "max_loss_rel_diff": max(abs(a - b) / abs(b) for a, b in
                                 zip(losses["shared"], losses["separate"])),
    }
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(f"SFT step, {label}, {len(micro)} micro-batches of {batch} ({what}): prompts "
              f"{result['mean_prompt_tokens']:.0f} + answers {result['mean_answer_tokens']:.0f} "
              f"tokens on average, shared heads {heads} tokens; cpu "
              f"({result['threads']} threads), mean over the micro-batches:")
        for v in variants:
            print(f"  {v:<9} {result['tokens_per_s'][v]:8.1f} tokens/s  "
                  f"({result['step_s'][v]:.2f} s/step)")
        print(f"  shared head vs whole rows: x{result['speedup_shared_vs_separate']:.2f} "
              f"(losses agree to {result['max_loss_rel_diff']:.1e} relative)")
    return 0
