"""`reclaif bench NAME`: each benchmark runs the variants it compares side by side in one
process (or one process per variant, started from here) and prints ratios, never bare times."""
from __future__ import annotations

import argparse
import importlib


def cmd_bench(args: argparse.Namespace) -> int:
    """Dispatches to reclaif.bench.<name>.run(args) (logprobs, sampling, train, e2e, peer)."""
    return int(importlib.import_module(f"reclaif.bench.{args.name}").run(args) or 0)
