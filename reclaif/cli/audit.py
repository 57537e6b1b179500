"""`reclaif judge audit`: how trustworthy were a run's verdicts?"""
from __future__ import annotations

import argparse
import json

from reclaif.cli.common import handler
from reclaif.judge.audit import audit_file, format_report


def register(jsub: argparse._SubParsersAction) -> None:
    p = jsub.add_parser("audit", help="position consistency, ties, agreement with labels")
    p.add_argument("verdicts", help="verdicts JSONL (a run's iter-NNN/verdicts.jsonl)")
    p.add_argument("--examples", help="dataset dir, for agreement with the human labels")
    p.add_argument("--json", action="store_true")
    handler(p, audit)


def audit(args: argparse.Namespace) -> int:
    result = audit_file(args.verdicts, args.examples)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0
