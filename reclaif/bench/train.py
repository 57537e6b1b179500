"""`reclaif bench train`: tokens/s of one DPO optimizer step (forward, backward, AdamW) in three
variants, side by side in this process on the same model and batch:

- fused:      the DPO loss fused into the chunked log-prob kernel, reference log-probs
              precomputed (what reclaif.train.dpo does);
- unfused:    the usual path, full [tokens, vocab] logits from the model's forward, log_softmax,
              gather, then the DPO loss; reference precomputed;
- recomputed: fused, but the reference model runs a no-grad forward every step (a second model
              in memory), as trainers without stored reference log-probs do.

--quick uses a tiny random Llama with the real 49k vocabulary (seconds); the default uses the
embedded SmolLM2-135M-Instruct; --device cuda uses a random Llama of Mistral-7B's width (hidden
4096, MLP 14336, 32/8 heads, vocab 32000) with 2 layers, 4 pairs of 1024 tokens, in the given dtype.
The batch is synthetic token ids (prompt + answer masks), which is all a throughput measurement
needs; it stays on the host, as the collator leaves it (see _step). Variants alternate within
each round, so drift in a shared machine's load affects them alike.
"""
from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from reclaif.train.fused_dpo import fused_dpo_loss, to_device_async
from reclaif.train.logprobs import model_sequence_logps
from reclaif.train.losses import dpo_loss
from reclaif.errors import ConfigError
from reclaif.llm.models import build_tiny_model, default_model_dir


def _batch(vocab: int, pairs: int, prompt: int, answer: int, seed: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    T = prompt + answer
    mask = torch.zeros(pairs, T, dtype=torch.long)
    mask[:, prompt:] = 1
    side = lambda: {"input_ids": torch.randint(0, vocab, (pairs, T), generator=g),  # noqa: E731
                    "attention_mask": torch.ones(pairs, T, dtype=torch.long), "loss_mask": mask}
    return side(), side()


def _unfused_logps(model, b: dict) -> torch.Tensor:
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), -1)
    tok = logp.gather(-1, b["input_ids"][:, 1:, None]).squeeze(-1)
    return (tok * b["loss_mask"][:, 1:]).sum(-1)


def _step(variant: str, model, ref_model, opt, c: dict, r: dict, refs: tuple, chunk: int) -> float:
    """c, r: the batch on the host, as the collator leaves it. The fused loss takes it there (its
    plan needs the host's masks); the other paths copy it over first, non-blocking from pinned
    memory as a tuned trainer would, so no variant waits for the GPU on its input."""
    dev = next(model.parameters()).device
    on_dev = lambda b: {k: to_device_async(v, dev) for k, v in b.items()}  # noqa: E731
    if variant == "recomputed":
        with torch.no_grad():
            cat = on_dev({k: torch.cat([c[k], r[k]]) for k in c})
            s, _ = model_sequence_logps(ref_model, cat["input_ids"], cat["attention_mask"],
                                        cat["loss_mask"], chunk)
            refs = (s[:c["input_ids"].shape[0]], s[c["input_ids"].shape[0]:])
    if variant == "unfused":
        cat = on_dev({k: torch.cat([c[k], r[k]]) for k in c})
        s = _unfused_logps(model, cat)
        n = c["input_ids"].shape[0]
        loss, _ = dpo_loss(s[:n], s[n:], refs[0], refs[1], beta=0.1)
    else:
        loss, _ = fused_dpo_loss(model, c, r, refs[0], refs[1], beta=0.1, chunk_size=chunk)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def _mistral_width_model(layers: int, dtype: torch.dtype) -> torch.nn.Module:
    """Mistral-7B's layer shapes at a depth one GPU can train with AdamW, random weights (no
    download): per-layer cost and the lm_head/vocab balance are what the kernels see."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=8,
                         max_position_embeddings=4096, tie_word_embeddings=False)
    return LlamaForCausalLM(config).to(dtype)


def run(*, quick: bool = False, device: str = "cpu", dtype: str = "float32",
        as_json: bool = False) -> int:
    """Prints a DPO step's fused, unfused and recomputed-reference variants side by side."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    torch_dtype = getattr(torch, dtype)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("bench device 'cuda': torch sees no CUDA device")
        model = _mistral_width_model(layers=2, dtype=torch_dtype).to(device)
        label = "random Llama, Mistral-7B width, 2 layers"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = build_tiny_model(Path(tmp) / "tiny") if quick else default_model_dir()
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        label = ("tiny random Llama (49k vocab)" if quick
                 else "SmolLM2-135M-Instruct (embedded default)")
    model.config.use_cache = False
    model.train()
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    pairs, prompt, answer, rounds = ((4, 768, 256, 5) if device == "cuda" else
                                     (2, 48, 16, 2) if quick else (2, 192, 64, 2))
    chunk = 1024
    vocab = model.config.vocab_size
    c, r = _batch(vocab, pairs, prompt, answer, seed=1)
    with torch.no_grad():
        cat = {k: torch.cat([c[k], r[k]]).to(device) for k in c}
        s, _ = model_sequence_logps(ref_model, cat["input_ids"], cat["attention_mask"],
                                    cat["loss_mask"], chunk)
    refs = (s[:pairs], s[pairs:])
    variants = ["fused", "unfused", "recomputed"]
    # weights are restored before every timed step, so each variant steps from the same point
    state = copy.deepcopy(model.state_dict())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    times: dict[str, list[float]] = {v: [] for v in variants}
    tokens = 2 * pairs * (prompt + answer)
    for v in variants:  # warm-up: allocator, kernels, lazy imports
        _step(v, model, ref_model, opt, c, r, refs, chunk)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    peak: dict[str, float] = {}
    for _ in range(rounds):
        for v in variants:
            model.load_state_dict(state)
            sync()
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            _step(v, model, ref_model, opt, c, r, refs, chunk)
            sync()
            times[v].append(time.perf_counter() - t0)
            if device == "cuda":
                peak[v] = torch.cuda.max_memory_allocated() / 2**30
    best = {v: min(ts) for v, ts in times.items()}
    result = {
        "bench": "train", "model": label, "params": sum(p.numel() for p in model.parameters()),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "dtype": str(torch_dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
        "pairs_per_step": pairs,
        "tokens_per_step": tokens, "rounds": rounds,
        "tokens_per_s": {v: tokens / best[v] for v in variants},
        "step_s": {v: best[v] for v in variants},
        "speedup_fused_vs_unfused": best["unfused"] / best["fused"],
        "speedup_precomputed_vs_recomputed_ref": best["recomputed"] / best["fused"],
    }
    if peak:  # whole process, weights and AdamW state included (step peaks, one round)
        result["peak_gib"] = peak
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(f"DPO step, {result['model']}, {pairs} pairs x {prompt + answer} tokens, "
              f"{result['device']} ({result['threads']} threads), best of {rounds}:")
        for v in variants:
            print(f"  {v:<11} {result['tokens_per_s'][v]:8.1f} tokens/s  ({best[v]:.2f} s/step)")
        print(f"  fused vs unfused kernel:           x{result['speedup_fused_vs_unfused']:.2f}")
        print(f"  precomputed vs recomputed reference: "
              f"x{result['speedup_precomputed_vs_recomputed_ref']:.2f}")
    return 0
