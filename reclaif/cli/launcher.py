"""`python -m reclaif.cli.launcher render|fill|list`: the launch templates on the command
line, for the slurm/ and launch/ scripts (the flags are theirs; the templates are the
library's, reclaif.pipeline.launcher)."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence

from reclaif.errors import ConfigError
from reclaif.pipeline import launcher
from reclaif.pipeline.launcher import TEMPLATES, fill_template, named_template, render_launch


def _parse_values(items: Sequence[str]) -> dict[str, str]:
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"'{item}': expected key=value")
        values[key] = value
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reclaif.cli.launcher",
                                     description=launcher.__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("render", help="print the argv of a named template")
    p.add_argument("name")
    p.add_argument("values", nargs="*", metavar="key=value")
    p.add_argument("--null", action="store_true",
                   help="NUL-separated arguments (for `mapfile -d ''`) instead of one quoted line")
    p = sub.add_parser("fill", help="print a named template with some placeholders filled")
    p.add_argument("name")
    p.add_argument("values", nargs="*", metavar="key=value")
    p.add_argument("--yaml", action="store_true",
                   help="print it as a YAML double-quoted string (for `launch.template=...`)")
    sub.add_parser("list", help="print the templates")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for name, text in TEMPLATES.items():
                print(f"{name}: {text}")
        elif args.command == "fill":
            text = fill_template(named_template(args.name), **_parse_values(args.values))
            print(json.dumps(text) if args.yaml else text)
        else:
            out = render_launch(named_template(args.name), **_parse_values(args.values))
            if args.null:
                sys.stdout.write("".join(a + "\0" for a in out))
            else:
                print(shlex.join(out))
    except ConfigError as e:
        print(f"reclaif.pipeline.launcher: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # `python -m reclaif.cli.launcher`, as the slurm/ and launch/ scripts run it
    sys.exit(main())
