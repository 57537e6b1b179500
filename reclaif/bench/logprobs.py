"""`reclaif bench logprobs`: the fused log-prob kernel against the usual path (full logits,
log_softmax, gather), forward plus backward, side by side on the same inputs.

Two comparisons per shape:
  logps  sequence_logps (chunked, recompute in backward)  vs  usual path, sum of log-probs
  dpo    fused_dpo_loss_from_hidden (grads formed in the forward)  vs  usual path + dpo_loss
Reported: max_abs_err (values), grad_max_abs_err (grad_hidden and grad_weight),
peak_mem_ratio (usual / fused) and time_ratio (fused / usual, median of repetitions).
--kernel picks the fused kernel's inner loop (torch, triton, auto: see train/logprobs.py); to
compare the two inner loops run it once with each (tests/gpu_triton_check.py does all at once).

Peak memory is what a path allocates beyond its inputs and the gradients it returns, read from
torch.profiler's memory events (allocations and frees in order; not process RSS): the maximum
of the running sum, leaving out the allocations of the returned grad_hidden and grad_weight.

The fused DPO loss is given its labels on the host, as the DPO trainer gives them (the
collator's masks): it plans its token layout there and never waits for the GPU (see
reclaif/train/fused_dpo.py's _Plan). The usual path gets them on the device, where it uses them.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from reclaif.errors import ConfigError
from reclaif.train.fused_dpo import fused_dpo_loss_from_hidden
from reclaif.train.logprobs import sequence_logps
from reclaif.train.losses import dpo_loss

FULL_SHAPES = [(4096, 576, 49152), (2048, 4096, 32000)]
QUICK_SHAPES = [(256, 64, 2048), (128, 96, 1000)]
SEQ_LEN = 128  # tokens per sequence: a chosen/rejected pair is one 256-token chunk
CHUNK = 256


def make_inputs(tokens: int, hidden: int, vocab: int, seed: int = 0, device: str = "cpu",
                dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    seq = min(SEQ_LEN, tokens // 2)
    rows = tokens // seq
    rows -= rows % 2
    h = torch.randn(rows, seq, hidden, generator=g) / hidden ** 0.25
    w = torch.randn(vocab, hidden, generator=g) / hidden ** 0.25
    labels = torch.randint(0, vocab, (rows, seq), generator=g)
    ref = -torch.rand(rows, generator=g) * seq * 3
    x = {"h": h.to(dtype), "w": w.to(dtype), "labels": labels,
         "ref_c": ref[: rows // 2], "ref_r": ref[rows // 2:]}
    out = {k: v.to(device) for k, v in x.items()}
    out["labels_host"] = labels  # what the fused DPO loss is given, as the trainer gives it
    return out


def _usual_logps(h: Tensor, w: Tensor, labels: Tensor) -> Tensor:
    logits = h @ w.T
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, labels[..., None]).squeeze(-1).sum(-1)


def logps_variants(x: dict, chunk: int = CHUNK, kernel: str = "auto",
                   weight_grad: str = "fp32") -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    return {
        "usual": lambda h, w: _usual_logps(h, w, x["labels"]).sum(),
        "fused": lambda h, w: sequence_logps(h, w, x["labels"], chunk_size=chunk, kernel=kernel,
                                             weight_grad_acc=weight_grad)[0].sum(),
    }


def dpo_variants(x: dict, chunk: int = CHUNK, beta: float = 0.1, kernel: str = "auto",
                 weight_grad: str = "fp32") -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    B = x["h"].shape[0] // 2

    def usual(h: Tensor, w: Tensor) -> Tensor:
        lp = _usual_logps(h, w, x["labels"])
        return dpo_loss(lp[:B], lp[B:], x["ref_c"], x["ref_r"], beta)[0]

    def fused(h: Tensor, w: Tensor) -> Tensor:
        return fused_dpo_loss_from_hidden(h, w, x["labels_host"], x["ref_c"], x["ref_r"], beta,
                                          chunk_size=chunk, kernel=kernel,
                                          weight_grad_acc=weight_grad)[0]
    return {"usual": usual, "fused": fused}


def value_and_grads(fn: Callable[[Tensor, Tensor], Tensor],
                    x: dict) -> tuple[Tensor, Tensor, Tensor]:
    """fn(h, w)'s value and its gradients w.r.t. h and w."""
    h = x["h"].detach().requires_grad_()
    w = x["w"].detach().requires_grad_()
    out = fn(h, w)
    gh, gw = torch.autograd.grad(out, [h, w])
    return out.detach(), gh, gw


def _peak_bytes(fn: Callable[[Tensor, Tensor], Tensor], x: dict) -> int:
    from torch.profiler import ProfilerActivity, profile

    device = x["h"].device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, profile_memory=True) as prof:
        _, gh, gw = value_and_grads(fn, x)
    # Every allocation and free, in order (the allocation records of the profiler's event tree;
    # prof.events() folds most of them into their ops and loses the order).
    events: list[tuple[int, int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        ef = node.extra_fields
        # only the inputs' device: host bookkeeping allocations are not the path's memory
        if (type(ef).__name__ == "_ExtraFields_Allocation"
                and torch.device(ef.device).type == device.type):
            events.append((node.start_time_ns, ef.alloc_size, ef.ptr))
        stack.extend(node.children)
    events.sort()
    # The returned gradients are the last allocations at their addresses: leave them out.
    returned = {gh.untyped_storage().data_ptr(), gw.untyped_storage().data_ptr()}
    skip = {max(i for i, (_, size, ptr) in enumerate(events) if ptr == r and size > 0)
            for r in returned if any(ptr == r and size > 0 for _, size, ptr in events)}
    running = peak = 0
    for i, (_, delta, _) in enumerate(events):
        if i not in skip:
            running += delta
            peak = max(peak, running)
    return max(peak, 1)


def _median_seconds(fn: Callable[[Tensor, Tensor], Tensor], x: dict, reps: int) -> float:
    times = []
    sync = torch.cuda.synchronize if x["h"].is_cuda else (lambda: None)
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        value_and_grads(fn, x)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compare_time(variants: dict[str, Callable], x: dict, reps: int) -> dict[str, float]:
    """Errors of fused vs usual and the time ratio (medians of interleaved repetitions, so a
    neighbour's load on a shared machine hits both alike)."""
    out_u, gh_u, gw_u = value_and_grads(variants["usual"], x)
    out_f, gh_f, gw_f = value_and_grads(variants["fused"], x)
    err = (out_f - out_u).abs().max().item()
    gerr = max((gh_f - gh_u).abs().max().item(), (gw_f - gw_u).abs().max().item())
    del out_u, gh_u, gw_u, out_f, gh_f, gw_f
    t_u, t_f = [], []
    for _ in range(reps):
        t_u.append(_median_seconds(variants["usual"], x, 1))
        t_f.append(_median_seconds(variants["fused"], x, 1))
    return {"max_abs_err": err, "grad_max_abs_err": gerr,
            "time_ratio": statistics.median(t_f) / statistics.median(t_u)}


def compare_memory(variants: dict[str, Callable], x: dict) -> dict[str, float]:
    peak_u, peak_f = _peak_bytes(variants["usual"], x), _peak_bytes(variants["fused"], x)
    return {"peak_mem_ratio": peak_u / peak_f, "usual_peak_mb": peak_u / 2**20,
            "fused_peak_mb": peak_f / 2**20}


def bench(shapes: list[tuple[int, int, int]], reps: int, device: str = "cpu",
          dtype: str = "float32", chunk: int = CHUNK, kernel: str = "auto",
          weight_grad: str = "fp32") -> list[dict]:
    results = []
    # Every timing before the first memory pass, so that no profiler session (CUPTI on CUDA)
    # has run in the process before a time is taken. (Suspected, not shown: on an H200 the
    # launch-bound fused DPO timed 0.92x fresh and 1.07-1.24x after profiling, but repeated
    # fresh runs spread as widely.)
    for tokens, hidden, vocab in shapes:
        x = make_inputs(tokens, hidden, vocab, device=device, dtype=getattr(torch, dtype))
        if device != "cpu":  # warm-up: kernel selection, the caching allocator
            for variants in (logps_variants(x, chunk, kernel, weight_grad),
                             dpo_variants(x, chunk, kernel=kernel, weight_grad=weight_grad)):
                for fn in variants.values():
                    value_and_grads(fn, x)
        row = {"tokens": tokens, "hidden": hidden, "vocab": vocab, "chunk_size": chunk,
               "dtype": dtype, "kernel": kernel, "weight_grad": weight_grad, "reps": reps}
        row.update(compare_time(logps_variants(x, chunk, kernel, weight_grad), x, reps))
        row["dpo"] = compare_time(dpo_variants(x, chunk, kernel=kernel, weight_grad=weight_grad),
                                  x, reps)
        results.append(row)
        del x
    for row in results:
        x = make_inputs(row["tokens"], row["hidden"], row["vocab"], device=device,
                    dtype=getattr(torch, dtype))
        row.update(compare_memory(logps_variants(x, chunk, kernel, weight_grad), x))
        row["dpo"].update(compare_memory(dpo_variants(x, chunk, kernel=kernel,
                                                       weight_grad=weight_grad), x))
        del x
    return results


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def run(*, quick: bool = False, device: str = "cpu", dtype: str = "float32",
        kernel: str = "auto", weight_grad: str | None = None, chunk: int | None = None,
        as_json: bool = False) -> int:
    """Prints the fused kernel against full logits (a table, or JSON with `as_json`)."""
    weight_grad = weight_grad or "fp32"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("bench device 'cuda': torch sees no CUDA device")
    if kernel == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError("bench kernel 'triton': runs on device cuda, or on CPU under "
                          "TRITON_INTERPRET=1 (Triton's interpreter: a check, not a timing)")
    reps = (2 if quick else 3) if device == "cpu" else 10
    chunk = chunk or CHUNK
    results = bench(QUICK_SHAPES if quick else FULL_SHAPES, reps=reps, device=device, dtype=dtype,
                    chunk=chunk, kernel=kernel, weight_grad=weight_grad)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    report = {"benchmark": "logprobs", "device": name, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "triton": _triton_version(), "results": results}
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"logprobs: fused kernel ({kernel} inner loop, chunk {chunk} tokens, weight gradient "
          f"summed in {weight_grad}) vs full logits "
          f"({dtype}, {name}, "
          f"{report['threads']} threads; "
          f"time = median of {results[0]['reps'] if results else 0}, fused/usual)")
    print(f"{'tokens':>6} {'hidden':>6} {'vocab':>6} | {'err':>8} {'grad_err':>8} {'mem x':>6} "
          f"{'time':>5} | dpo: {'err':>8} {'grad_err':>8} {'mem x':>6} {'time':>5}")
    for r in results:
        d = r["dpo"]
        print(f"{r['tokens']:>6} {r['hidden']:>6} {r['vocab']:>6} | {r['max_abs_err']:8.1e} "
              f"{r['grad_max_abs_err']:8.1e} {r['peak_mem_ratio']:6.1f} {r['time_ratio']:5.2f} | "
              f"     {d['max_abs_err']:8.1e} {d['grad_max_abs_err']:8.1e} {d['peak_mem_ratio']:6.1f} "
              f"{d['time_ratio']:5.2f}")
    return 0
