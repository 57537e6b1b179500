"""`reclaif bench sampling`: batched vs one-prompt-at-a-time sampling with the hf backend.

The same real LastFM recommender prompts (the bundled sample, rendered by the recommender) are
sampled both ways, side by side in one process with one loaded model, and the bench prints
generated tokens/s of each and their ratio. Tokens counted are each answer's own, up to its EOS,
never padding. On a shared machine wall time is noisy, so tokens per CPU-second are printed too.

The prompt's prefill is the same work in both modes (about 460 tokens per LastFM prompt), so it
bounds the ratio: the more tokens generated per prompt, the more batching gains (--max-new-tokens).
The one-at-a-time mode runs in two halves, before and after the batched run (A B A), so a drift
in the machine's speed (this shared 2-core VM swings by a quarter within minutes) falls on both
modes alike. Answers per prompt and their length default to the sampling config's (2 answers
of up to 256 tokens, as the driver samples them).
Both modes use the client's decoder (reclaif/llm/decode.py where the model allows);
--with-generate adds a third run that samples the same batches with transformers' `generate`,
for the gain of that decode loop.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any

from reclaif.config import LLMSpec, SamplingConfig
from reclaif.data import load_examples, load_items
from reclaif.errors import DataError
from reclaif.llm.hf import HFClient
from reclaif.prompts import render_recommender


@dataclass
class ModeResult:
    mode: str
    batch_size: int
    prompts: int
    prompt_tokens: int
    padded_prompt_tokens: int
    generated_tokens: int
    wall_s: float
    cpu_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_s if self.wall_s else 0.0

    @property
    def tokens_per_cpu_s(self) -> float:
        return self.generated_tokens / self.cpu_s if self.cpu_s else 0.0


def bench_prompts(count: int, top_k: int = 3) -> list[str]:
    """`count` real recommender prompts from the bundled LastFM sample."""

    examples = load_examples("sample")
    if not examples:

        raise DataError("the bundled LastFM sample has no examples")
    items = load_items("sample")
    return [render_recommender(examples[i % len(examples)], items, top_k) for i in range(count)]


def run_mode(client: Any, prompts: list[str], batch_size: int, mode: str,
             sampling: SamplingConfig, max_new_tokens: int, decoder: str = "auto") -> ModeResult:
    client.spec.batch_size = batch_size
    client.decoder = decoder
    c0 = time.process_time()
    client.generate(prompts, n=sampling.num_samples, temperature=sampling.temperature,
                    top_p=sampling.top_p, max_new_tokens=max_new_tokens, seed=0)
    cpu = time.process_time() - c0
    s = client.last_stats
    return ModeResult(mode, batch_size, len(prompts), s.prompt_tokens, s.padded_prompt_tokens,
                      s.generated_tokens, s.seconds, cpu)


def _joined(mode: str, a: ModeResult, b: ModeResult) -> ModeResult:
    return ModeResult(mode, a.batch_size, a.prompts + b.prompts, a.prompt_tokens + b.prompt_tokens,
                      a.padded_prompt_tokens + b.padded_prompt_tokens,
                      a.generated_tokens + b.generated_tokens, a.wall_s + b.wall_s,
                      a.cpu_s + b.cpu_s)


def measure(model: str = "default", prompts: int = 16, batch_size: int = 16,
            max_new_tokens: int | None = None, num_samples: int | None = None,
            with_generate: bool = False) -> dict[str, Any]:
    import torch

    t0 = time.perf_counter()
    client = HFClient(LLMSpec(model=model, batch_size=batch_size))
    load_s = time.perf_counter() - t0
    texts = bench_prompts(prompts)
    sampling = SamplingConfig()
    max_new_tokens = max_new_tokens or sampling.max_new_tokens
    sampling.num_samples = num_samples or sampling.num_samples
    client.generate(texts[:1], max_new_tokens=2)  # warm-up: first-call costs hit neither mode
    load_before = os.getloadavg()[0]
    half = len(texts) // 2
    first = run_mode(client, texts[:half], 1, "one at a time", sampling, max_new_tokens)
    batched = run_mode(client, texts, batch_size, f"batch {batch_size}", sampling, max_new_tokens)
    second = run_mode(client, texts[half:], 1, "one at a time", sampling, max_new_tokens)
    single = _joined("one at a time", first, second)
    modes = [batched, single]
    if with_generate:
        modes.append(run_mode(client, texts, batch_size, f"batch {batch_size}, generate",
                              sampling, max_new_tokens, decoder="generate"))
    return {
        "model": client.spec.model, "device": str(client.device),
        "attn": client.model.config._attn_implementation, "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "model_load_s": round(load_s, 2), "max_new_tokens": max_new_tokens,
        "num_samples": sampling.num_samples,
        "temperature": sampling.temperature, "top_p": sampling.top_p,
        "modes": [{**asdict(m), "tokens_per_s": round(m.tokens_per_s, 2),
                   "tokens_per_cpu_s": round(m.tokens_per_cpu_s, 2)} for m in modes],
        "speedup": round(batched.tokens_per_s / single.tokens_per_s, 2) if single.tokens_per_s else 0,
        "speedup_cpu_time": (round(batched.tokens_per_cpu_s / single.tokens_per_cpu_s, 2)
                             if single.tokens_per_cpu_s else 0),
        "decoder": "reclaif" if client.own_decode_loop else "generate",
        **({"decoder_speedup_vs_generate": round(batched.tokens_per_s / modes[2].tokens_per_s, 2)}
           if with_generate and modes[2].tokens_per_s else {}),
    }


def run(*, quick: bool = False, model: str = "default", max_new_tokens: int | None = None,
        num_samples: int | None = None, with_generate: bool = False,
        as_json: bool = False) -> int:
    """Prints batched against one-at-a-time sampling (a table, or JSON with `as_json`)."""
    result = measure(model=model or "default",
                     prompts=4 if quick else 16, batch_size=4 if quick else 16,
                     max_new_tokens=max_new_tokens or (16 if quick else None),
                     num_samples=num_samples, with_generate=with_generate)
    if as_json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"sampling bench: {result['model']} on {result['device']} ({result['attn']}, "
          f"{result['num_samples']} answers of up to {result['max_new_tokens']} tokens per prompt, "
          f"{result['torch_threads']} threads, load average {result['load_average']})")
    print(f"{'mode':<16}{'prompts':>8}{'prompt tok':>11}{'new tok':>9}{'wall s':>9}"
          f"{'tok/s':>9}{'tok/cpu-s':>11}")
    for m in result["modes"]:
        print(f"{m['mode']:<16}{m['prompts']:>8}{m['prompt_tokens']:>11}"
              f"{m['generated_tokens']:>9}{m['wall_s']:>9.1f}{m['tokens_per_s']:>9.2f}"
              f"{m['tokens_per_cpu_s']:>11.2f}")
    print(f"speed-up batched / one at a time: {result['speedup']:.2f}x tokens/s "
          f"({result['speedup_cpu_time']:.2f}x tokens per CPU-second); decoder: {result['decoder']}")
    if "decoder_speedup_vs_generate" in result:
        print(f"batched tokens/s of that decoder / transformers' generate: "
              f"{result['decoder_speedup_vs_generate']:.2f}x")
    return 0
