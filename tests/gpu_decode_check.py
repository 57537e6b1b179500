"""GPU check, run by hand on a CUDA machine (CI has none): the hf backend's own decode loop
(reclaif/llm/decode.py) on CUDA. Prints one JSON line per part; exits 1 if a part failed.

    python tests/gpu_decode_check.py [--max-new-tokens N]

1. equality: greedy answers of the loop (batched, shared prefix, rows ending at different
   steps) against transformers' generate one prompt at a time, on a tiny random Llama in fp32.
2. speed: tokens/s of the loop against transformers' generate on the same batch, random weights
   of SmolLM2-135M's shape in bf16: 16 prompts of ~460 tokens sharing a 90-token prefix, two
   answers each (how the driver samples). Runs in A-B-A order; random weights rarely emit EOS,
   so every answer runs to max_new_tokens in both.
No tokenizer and no download: prompts are random token ids.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from reclaif.llm import decode

EOS = 2
DEVICE = "cuda"  # --device cpu: a dry run of the script itself


def _model(dtype: torch.dtype, **shape) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=2048, bos_token_id=1, eos_token_id=EOS,
                         pad_token_id=0, attn_implementation="sdpa", **shape)
    return LlamaForCausalLM(config).to(DEVICE, dtype).eval()


def _prompts(count: int, shared: int, lo: int, hi: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    head = torch.randint(3, vocab, (shared,), generator=g).tolist()
    return [head + torch.randint(3, vocab, (int(torch.randint(lo, hi, (1,), generator=g)),),
                                 generator=g).tolist() for _ in range(count)]


def _generate(model, prompts: list[list[int]], n: int, greedy: bool, max_new: int) -> list[list[int]]:
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=DEVICE)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=DEVICE)
    kw = {"do_sample": False} if greedy else {"do_sample": True, "temperature": 1.0,
                                              "top_p": 0.95, "top_k": 0}
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new,
                         num_return_sequences=n, eos_token_id=EOS, pad_token_id=0, **kw)
    rows = []
    for seq in out[:, width:].tolist():
        rows.append(seq[:seq.index(EOS) + 1] if EOS in seq else seq)
    return rows


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def check_equality() -> dict:
    model = _model(torch.float32, vocab_size=512, hidden_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
    prompts = _prompts(8, 24, 3, 40, 512)
    with torch.inference_mode():
        mine = decode.sample(model, prompts, 1, 0.0, 1.0, 48, [EOS], 0)
        ref = [_generate(model, [p], 1, True, 48)[0] for p in prompts]
    lengths = [len(a) for a in mine]
    equal = sum(a == b for a, b in zip(mine, ref))
    return {"part": "equality", "rows": len(prompts), "equal_rows": equal,
            "answer_lengths": lengths, "ok": equal == len(prompts)}


def check_speed(max_new: int) -> dict:
    model = _model(torch.bfloat16, vocab_size=49152, hidden_size=576, num_hidden_layers=30,
                   num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
                   tie_word_embeddings=True)
    prompts = _prompts(16, 90, 330, 410, 49152)
    modes = {"loop": lambda: decode.sample(model, prompts, 2, 1.0, 0.95, max_new, [EOS], 0),
             "generate": lambda: _generate(model, prompts, 2, False, max_new)}
    runs = {"loop": [], "generate": []}
    with torch.inference_mode():
        for fn in modes.values():  # warm-up: kernels, allocator
            fn()
        for name in ("loop", "generate", "loop", "generate"):
            _sync()
            t0 = time.perf_counter()
            rows = modes[name]()
            _sync()
            runs[name].append(sum(map(len, rows)) / (time.perf_counter() - t0))
    tps = {k: round(max(v), 1) for k, v in runs.items()}
    return {"part": "speed", "device": torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE, "prompts": 16, "n": 2,
            "max_new_tokens": max_new, "tokens_per_s": tps, "all_runs": runs,
            "loop_over_generate": round(tps["loop"] / tps["generate"], 3), "ok": True}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        return 1
    failed = 0
    for part in (check_equality, lambda: check_speed(args.max_new_tokens)):
        try:
            row = part()
        except Exception as e:  # noqa: BLE001 - report and go on to the next part
            row = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        failed += not row["ok"]
        print(json.dumps(row), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
