"""ValidRatio: the share of answers that follow the output format (the rule is `is_valid`)."""
from __future__ import annotations

from reclaif.parsing import is_valid

__all__ = ["is_valid", "valid_ratio"]


def valid_ratio(flags: list[bool]) -> float:
    """Share of True among `flags` (one per example; a missing answer counts as False)."""
    return sum(1 for f in flags if f) / len(flags) if flags else 0.0
