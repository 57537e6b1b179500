"""Flag helpers shared by the command groups: one way to declare a handler and the
`--config/--run-dir/key=value` trio, and flag help taken from the config field a flag mirrors."""
from __future__ import annotations

import argparse
from collections.abc import Callable

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
