"""`reclaif bench sdpo`: what one S-DPO step on groups of N = 4 answers costs against the
pairwise DPO steps on the same answers (issue 32 item 3), side by side in this process.

Groups: bundled-sample LastFM recommender prompts (as the samplers render them), the offline
teacher's answer as chosen and three other orders of its ranking as rejected (the reverse
first), encoded by groups.encode_group. Variants, on the same model, answers and reference
log-probs (computed once, before any update, by the packed forward under no_grad):
- sdpo:     ONE step of groups.fused_sdpo_loss, each group one row [prompt | chosen |
            rejected_1..3], so each prompt runs once;
- pairwise: THREE steps of fused_dpo_loss (sigmoid, the recipe's shared-prompt forward), step j
            on the pairs (chosen, rejected_j): each prompt runs three times, the chosen answer
            three times; the head all the step's prompts begin with (shared_head.batch_head,
            the template's instructions) once per step, as the recipe runs it.
A step is forward, backward and AdamW; the weights are restored before each timed variant, so
both start from the same point, and variants alternate within each round. Tokens run: the
non-padding tokens the model's body processes (packed rows). Peak memory: on CUDA
max_memory_allocated of the variant; on CPU the process's peak RSS over the variant (VmHWM,
reset through /proc/self/clear_refs before it), weights and optimizer state included.
--quick: a tiny random Llama with the real 49k vocabulary, max_length 640 (the sample's prompts
are ~430-480 tokens and are never cut, as in training).
"""
from __future__ import annotations

import copy
import itertools
import json
import tempfile
import time
from pathlib import Path

import torch

from reclaif.bench.peer import reordered
from reclaif.data import load_examples, load_items
from reclaif.errors import ConfigError
from reclaif.llm.models import build_tiny_model, default_model_dir, load_tokenizer
from reclaif.prompts import render_recommender
from reclaif.teacher import OfflineTeacher
from reclaif.train.data import collate_pairs
from reclaif.train.fused_dpo import fused_dpo_loss
from reclaif.train.groups import collate_groups, encode_group, fused_sdpo_loss, group_logps
from reclaif.train.shared_head import batch_head, head_support

ANSWERS, TOP_K, BETA = 4, 5, 0.1


def lastfm_groups(tokenizer, count: int, max_length: int) -> list[list[dict]]:
    """`count` encoded groups of ANSWERS answers from the bundled LastFM sample (chosen first)."""
    examples, items = load_examples("sample"), load_items("sample")
    teacher = OfflineTeacher(items, TOP_K)
    orders = list(itertools.permutations(range(TOP_K)))[::-1][:ANSWERS - 1]  # reverse first
    out = []
    for e in examples[:count]:
        good = teacher.respond(e)
        answers = [good] + [reordered(good, o) for o in orders]
        out.append(encode_group(tokenizer, render_recommender(e, items, TOP_K), answers,
                                max_length))
    return out


def _peak_rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _peak_rss_gib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**20


def run(*, quick: bool = False, device: str = "cpu", dtype: str = "float32",
        as_json: bool = False, groups: int | None = None) -> int:
    """Prints an S-DPO step (N = 4) and the three pairwise steps on the same answers."""
    from transformers import AutoModelForCausalLM

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("bench device 'cuda': torch sees no CUDA device")
    torch.manual_seed(0)
    torch_dtype = getattr(torch, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(Path(tmp) / "tiny") if quick else default_model_dir()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype,
                                                     attn_implementation="sdpa").to(device)
        tokenizer = load_tokenizer(path)
    label = "tiny random Llama (49k vocab)" if quick else "SmolLM2-135M-Instruct (embedded default)"
    model.config.use_cache = False
    model.train()
    G = groups or (2 if quick else 4)
    max_length, rounds = (640, 2) if quick else (1024, 2)
    encoded = lastfm_groups(tokenizer, G, max_length)
    pad = tokenizer.pad_token_id
    batch = collate_groups(encoded, pad)
    with torch.no_grad():
        ref, _ = group_logps(model, batch)
    ref = ref.cpu()
    # pairwise step j: (chosen, rejected_j) of every group, their reference log-probs
    pair_steps = []
    for j in range(1, ANSWERS):
        pb = collate_pairs([{"example_id": str(g), "chosen": rows[0], "rejected": rows[j]}
                            for g, rows in enumerate(encoded)], pad)
        idx = torch.arange(G) * ANSWERS
        pair_steps.append((pb, ref[idx], ref[idx + j]))

    def sdpo() -> None:
        loss, _ = fused_sdpo_loss(model, batch, ref, BETA)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def pairwise() -> None:
        for pb, rc, rr in pair_steps:
            loss, _ = fused_dpo_loss(model, pb["chosen"], pb["rejected"], rc, rr, BETA,
                                     shared_prompt=True)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    prompt_len = [r[0]["loss_mask"].index(1) for r in encoded]
    lengths = [[len(a["input_ids"]) - p for a in rows] for rows, p in zip(encoded, prompt_len)]
    # pair_hidden runs each pairwise step's common head once, then every row's remainder
    heads = [batch_head(pb["chosen"]) if head_support(model) is None else 0
             for pb, _, _ in pair_steps]
    tokens = {"sdpo": sum(p + sum(ls) for p, ls in zip(prompt_len, lengths)),
              "pairwise": sum(3 * p + (ANSWERS - 1) * ls[0] + sum(ls[1:])
                              for p, ls in zip(prompt_len, lengths))
              - sum(h * (G - 1) for h in heads)}
    variants = {"sdpo": sdpo, "pairwise": pairwise}
    state = copy.deepcopy(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    for fn in variants.values():  # warm-up: allocator, kernels, AdamW state
        fn()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {v: [] for v in variants}
    peak: dict[str, float] = {v: 0.0 for v in variants}
    for _ in range(rounds):
        for v, fn in variants.items():
            model.load_state_dict(state)
            sync()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            else:
                _peak_rss_reset()
            t0 = time.perf_counter()
            fn()
            sync()
            times[v].append(time.perf_counter() - t0)
            peak[v] = max(peak[v], torch.cuda.max_memory_allocated() / 2**30 if device == "cuda"
                          else _peak_rss_gib())
    best = {v: min(ts) for v, ts in times.items()}
    result = {
        "bench": "sdpo", "model": label, "params": sum(p.numel() for p in model.parameters()),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "dtype": dtype, "threads": torch.get_num_threads(), "groups": G, "answers": ANSWERS,
        "prompt_tokens": prompt_len, "answer_tokens": lengths, "rounds": rounds,
        "pairwise_head_tokens": heads,
        "optimizer_steps": {"sdpo": 1, "pairwise": ANSWERS - 1},
        "tokens_run": tokens, "seconds": best,
        "tokens_per_s": {v: tokens[v] / best[v] for v in variants},
        "peak_gib": peak, "peak_kind": "max_memory_allocated" if device == "cuda" else "peak RSS",
        "time_ratio_pairwise_over_sdpo": best["pairwise"] / best["sdpo"],
        "tokens_ratio_pairwise_over_sdpo": tokens["pairwise"] / tokens["sdpo"],
    }
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(f"S-DPO (N={ANSWERS}) vs pairwise DPO on the same answers, {label}, {G} groups "
              f"(prompts {prompt_len} tokens), {result['device']} ({result['threads']} threads), "
              f"best of {rounds}:")
        for v in variants:
            print(f"  {v:<9} {result['optimizer_steps'][v]} step(s)  {tokens[v]:6d} tokens run  "
                  f"{best[v]:7.2f} s  {result['tokens_per_s'][v]:8.1f} tokens/s  "
                  f"peak {peak[v]:.2f} GiB ({result['peak_kind']})")
        print(f"  pairwise / sdpo: x{result['time_ratio_pairwise_over_sdpo']:.2f} time, "
              f"x{result['tokens_ratio_pairwise_over_sdpo']:.2f} tokens run")
    return 0
