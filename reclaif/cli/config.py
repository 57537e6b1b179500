"""`reclaif config show`: every config key with its value, default and help."""
from __future__ import annotations

import argparse
import json

from reclaif.cli.common import handler
from reclaif.config_load import describe, load_config


def register(sub: argparse._SubParsersAction) -> None:
    cfg = sub.add_parser("config", help="the run config's keys, values, defaults and help")
    csub = cfg.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    p = csub.add_parser("show", help="print every key (dotted) with its value, default and help")
    p.add_argument("--config", help="run config YAML (configs/*.yaml); default: the defaults")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    handler(p, show)


def show(args: argparse.Namespace) -> int:
    section = None
    for k in describe(load_config(args.config, args.overrides)):
        if k.section != section and "." in k.key:
            section = k.section
            print(f"\n# {k.key.rpartition('.')[0]}: {section}")
        # JSON for values: a string is quoted, so '' and 'null' read as what they are
        changed = "" if k.value == k.default else "   (changed)"
        print(f"{k.key} = {json.dumps(k.value)}   [default: {json.dumps(k.default)}]{changed}")
        print(f"    {k.help}" + (f" One of: {', '.join(k.choices)}." if k.choices else ""))
    return 0
