"""`reclaif compare A B`: two runs on the same examples, as paired differences per stage."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from reclaif.cli.common import handler


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="two runs on the same examples: paired differences")
    p.add_argument("run_a", help="run directory A (differences are A − B)")
    p.add_argument("run_b", help="run directory B")
    p.add_argument("--stage", action="append", default=[],
                   help="a stage both runs evaluated (base, sft, iter-001, ...); repeatable; "
                        "default: every stage both have")
    p.add_argument("--json", action="store_true")
    handler(p, compare)


def compare(args: argparse.Namespace) -> int:
    # imported when it runs: the report's modules (judge, teacher) are more than `--help` needs
    from reclaif.pipeline.compare import compare_runs, format_comparison

    result = compare_runs(args.run_a, args.run_b, args.stage or None)
    if args.json:
        print(json.dumps({s: [asdict(d) for d in diffs] for s, diffs in result}, indent=2))
    else:
        print(format_comparison(result, args.run_a, args.run_b))
    return 0
