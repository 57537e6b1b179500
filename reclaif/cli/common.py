"""Flag helpers shared by the command groups: one way to declare a handler and the
`--config/--run-dir/key=value` trio, and flag help taken from the config field a flag mirrors."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from reclaif.config import help_of

Handler = Callable[[argparse.Namespace], int]


def handler(p: argparse.ArgumentParser, fn: Handler) -> None:
    p.set_defaults(_handler=fn)


def config_args(p: argparse.ArgumentParser, run_dir_required: bool = False) -> None:
    p.add_argument("--config", help="run config YAML (configs/*.yaml)")
    p.add_argument("--run-dir", required=run_dir_required, help="run directory (runs/NAME)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


def field_help(section: type, name: str, prefix: str = "") -> str:
    """The help of the config field a flag mirrors; argparse formats '%', so it is escaped."""
    return (prefix + help_of(section, name)).replace("%", "%%")


def _at_least(kind: type, low: float, strict: bool) -> Callable[[str], Any]:
    """An argparse `type` that refuses numbers below `low` (or not above it, `strict`) with one
    line naming the bound: `--top-k -2` would otherwise run and score zeros."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value != value or (value <= low if strict else value < low):
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected {'an integer' if kind is int else 'a number'} "
                f"{'>' if strict else '>='} {low}")
        return value
    return parse


positive_int, count = _at_least(int, 1, False), _at_least(int, 0, False)
positive_float = _at_least(float, 0, True)
