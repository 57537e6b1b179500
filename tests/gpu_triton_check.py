"""GPU check, run by hand on a CUDA machine (CI has none): the fused log-prob kernel with its
Triton inner loop against its torch inner loop and the usual full-logits path, for log-probs
(sequence_logps) and the fused DPO loss, at the bench's shapes, bf16 and fp32, chunk 1024 and
4096. Prints one JSON line per case; a case that raises prints its error and the others still
run. Exits 1 if a case failed or the Triton loop strays from the torch loop beyond TOLERANCE.

    python tests/gpu_triton_check.py [--quick] [--reps N]

Errors are relative to the largest magnitude of the torch loop's value or gradient. Times are
medians of interleaved repetitions (ms); peak is torch.cuda.max_memory_allocated above what was
allocated before (MiB, the returned gradients included, the same for every path).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback

import torch

from reclaif.bench.logprobs import (FULL_SHAPES, dpo_variants, logps_variants, make_inputs,
                                    value_and_grads)

SHAPES = FULL_SHAPES  # (tokens, hidden, vocab): (4096, 576, 49152), (2048, 4096, 32000)
QUICK_SHAPES = [(512, 64, 5000)]
# relative error allowed between the two inner loops: value, gradient. In bf16 both read the
# same bf16 logits; a gradient element can still round to the other side of a bf16 step.
TOLERANCE = {"float32": (1e-5, 1e-4), "bfloat16": (1e-5, 2e-2)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-30)).item()


def _time_and_peak(fns: dict, x: dict, reps: int) -> dict[str, dict[str, float]]:
    out = {}
    for name, fn in fns.items():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        value_and_grads(fn, x)
        torch.cuda.synchronize()
        out[name] = {"peak_mib": (torch.cuda.max_memory_allocated() - base) / 2**20, "ms": []}
    for _ in range(reps):  # interleaved, so a clock change hits every path alike
        for name, fn in fns.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            value_and_grads(fn, x)
            torch.cuda.synchronize()
            out[name]["ms"].append(1e3 * (time.perf_counter() - t0))
    for v in out.values():
        v["ms"] = statistics.median(v["ms"])
    return out


def check_case(tokens: int, hidden: int, vocab: int, dtype: str, chunk: int, what: str,
               reps: int) -> dict:
    x = make_inputs(tokens, hidden, vocab, device="cuda", dtype=getattr(torch, dtype))
    variants = {k: (logps_variants(x, chunk, kernel=k) if what == "logps"
                    else dpo_variants(x, chunk, kernel=k)) for k in ("torch", "triton")}
    fns = {"usual": variants["torch"]["usual"], "torch": variants["torch"]["fused"],
           "triton": variants["triton"]["fused"]}
    # also the warm-up (Triton compiles)
    res = {name: value_and_grads(fn, x) for name, fn in fns.items()}
    row = {"what": what, "tokens": tokens, "hidden": hidden, "vocab": vocab, "dtype": dtype,
           "chunk": chunk}
    for name in ("triton", "usual"):
        row[f"{name}_vs_torch"] = {k: _rel(a, b) for k, a, b in
                                   zip(("value", "grad_h", "grad_w"), res[name], res["torch"])}
    del res
    perf = _time_and_peak(fns, x, reps)
    row.update({f"{k}_ms": round(v["ms"], 3) for k, v in perf.items()})
    row.update({f"{k}_peak_mib": round(v["peak_mib"], 1) for k, v in perf.items()})
    row["speedup_triton_over_torch"] = round(perf["torch"]["ms"] / perf["triton"]["ms"], 3)
    row["time_ratio_triton_over_usual"] = round(perf["triton"]["ms"] / perf["usual"]["ms"], 3)
    tv, tg = TOLERANCE[dtype]
    e = row["triton_vs_torch"]
    row["ok"] = e["value"] <= tv and max(e["grad_h"], e["grad_w"]) <= tg
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small shape")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        return 1
    try:
        import triton
        version = triton.__version__
    except ImportError as e:
        print(json.dumps({"error": f"triton not importable: {e}"}))
        return 1
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "triton": version}), flush=True)
    failed = 0
    for tokens, hidden, vocab in (QUICK_SHAPES if args.quick else SHAPES):
        for dtype in ("bfloat16", "float32"):
            for chunk in (1024, 4096):
                for what in ("logps", "dpo"):
                    case = {"what": what, "tokens": tokens, "hidden": hidden, "vocab": vocab,
                            "dtype": dtype, "chunk": chunk}
                    try:
                        row = check_case(tokens, hidden, vocab, dtype, chunk, what, args.reps)
                    except Exception as e:  # noqa: BLE001 - one case's failure must not end the run
                        row = {**case, "ok": False, "error": f"{type(e).__name__}: {e}",
                               "where": traceback.format_exc(limit=-3)}
                    failed += not row["ok"]
                    print(json.dumps(row), flush=True)
                    torch.cuda.empty_cache()
    print(json.dumps({"cases_failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
