"""`reclaif plan`: memory and time plan for a cluster run."""
from __future__ import annotations

import argparse
import dataclasses
import json

from reclaif.cli.common import handler
from reclaif.config_load import load_config
from reclaif.plan import Assumptions, format_plan, plan as make_plan


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="memory and time plan for a cluster run")
    p.add_argument("--config", required=True)
    p.add_argument("--gpus", type=int, required=True, help="GPUs per node")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpu-memory-gb", type=float, default=80.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    # Assumptions of the estimate; defaults live in reclaif.plan.Assumptions.
    for flag, typ, text in [("--peak-tflops", float, "GPU peak TFLOPS (default 312, A100 bf16)"),
                            ("--mfu", float, "training MFU (default 0.40)"),
                            ("--sampling-mfu", float, "sampling MFU (default 0.10)"),
                            ("--judge-latency-s", float, "seconds per remote LLM call (default 10)"),
                            ("--headroom", float, "memory fraction kept free (default 0.10)"),
                            ("--overhead-gb", float, "CUDA/NCCL overhead per GPU (default 2)"),
                            ("--prompts", int, "training prompts (default: config, else 60%% of "
                                                    "the paper's Table 1 users)"),
                            ("--eval-prompts", int, "eval prompts (default: config, else 20%%)"),
                            ("--prompt-tokens", int, "mean prompt tokens (default 600)")]:
        p.add_argument(flag, type=typ, help=text)
    handler(p, plan)


def plan(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    names = {f.name for f in dataclasses.fields(Assumptions)}
    a = Assumptions(**{k: v for k, v in vars(args).items() if k in names and v is not None})
    p = make_plan(cfg, args.gpus, args.nodes, args.gpu_memory_gb, a)
    print(json.dumps(p, indent=2) if args.json else format_plan(p, args.config))
    return 0
