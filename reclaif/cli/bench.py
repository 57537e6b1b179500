"""`reclaif bench NAME`: benchmarks whose ratios are measured side by side."""
from __future__ import annotations

import argparse
from collections.abc import Callable

from reclaif.cli.common import field_help, handler
from reclaif.config import TrainConfig, choices

BENCHES = ["logprobs", "sampling", "train", "sft", "e2e", "peer", "sdpo"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: ratios measured side by side")
    p.add_argument("name", choices=BENCHES)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="smaller shapes (smoke test)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="logprobs, train, sdpo: where the variants run")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="logprobs, train, sdpo: dtype of hidden states, weights and model")
    p.add_argument("--chunk", type=int, default=None,
                   help="logprobs: token chunk of the fused kernel (default 256)")
    p.add_argument("--kernel", choices=choices(TrainConfig, "logprob_kernel"), default="auto",
                   help=field_help(TrainConfig, "logprob_kernel",
                                   "logprobs: as sft/dpo.logprob_kernel: "))
    p.add_argument("--weight-grad", choices=choices(TrainConfig, "logprob_weight_grad"),
                   default=None,
                   help=field_help(TrainConfig, "logprob_weight_grad",
                                   "logprobs (default fp32), as sft/dpo.logprob_weight_grad: "))
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="sampling: tokens generated per prompt (default: the sampling "
                        "config's, 256)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="sampling: answers per prompt (default: the sampling config's, 2)")
    p.add_argument("--with-generate", action="store_true",
                   help="sampling: also time the batches with transformers' generate")
    p.add_argument("--steps", type=int, default=None,
                   help="peer: timed DPO steps per run of each side (default 3, --quick 1; "
                        "with more than 1, one more untimed warm-up step runs first); sft: "
                        "micro-batches, each stepped by both variants (default 2)")
    p.add_argument("--teacher", default=None,
                   help="sft: a run's sft/teacher.jsonl to take the rows from (default: the "
                        "bundled sample's prompts rendered as the proof config does)")
    p.add_argument("--evidence", default=None,
                   help="sft: a fitted evidence directory (a run's evidence/full) for those "
                        "prompts (default: transition and tag_overlap fitted on the spot)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="peer: the project's side trains with dpo.gradient_checkpointing "
                        "(TRL's side without, its fastest setting)")
    handler(p, bench)


def _options(args: argparse.Namespace) -> dict:
    """The keyword arguments of the named benchmark's run(): the flags it reads."""
    common = {"quick": args.quick, "as_json": args.json}
    if args.name in ("logprobs", "train", "peer", "sdpo"):
        common.update(device=args.device, dtype=args.dtype)
    if args.name == "logprobs":
        common.update(kernel=args.kernel, weight_grad=args.weight_grad, chunk=args.chunk)
    elif args.name == "sampling":
        common.update(max_new_tokens=args.max_new_tokens, num_samples=args.num_samples,
                      with_generate=args.with_generate)
    elif args.name == "sft":
        common.update(teacher=args.teacher, evidence_dir=args.evidence, rounds=args.steps)
    elif args.name == "peer":
        common.update(steps=args.steps, gradient_checkpointing=args.gradient_checkpointing)
    return common


def _run_of(name: str) -> Callable[..., int]:
    # imported here, the one benchmark asked for: each imports torch at its top (peer also TRL,
    # when it runs), and the benchmarks are the layer above the CLI that only this handler loads
    # (docs/ARCHITECTURE.md, "Import layering")
    if name == "logprobs":
        from reclaif.bench.logprobs import run
    elif name == "sampling":
        from reclaif.bench.sampling import run
    elif name == "train":
        from reclaif.bench.train import run
    elif name == "sft":
        from reclaif.bench.sft import run
    elif name == "e2e":
        from reclaif.bench.e2e import run
    elif name == "sdpo":
        from reclaif.bench.sdpo import run
    else:
        from reclaif.bench.peer import run
    return run


def bench(args: argparse.Namespace) -> int:
    return int(_run_of(args.name)(**_options(args)) or 0)
