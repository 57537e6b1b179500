"""The config's single-field rules are declarations: each bound written on a field of
reclaif/config.py is checked by reclaif/config_load.py, on every section that field appears in
(sft and dpo, the four LLM specs), with a message that names the key (and the file)."""
from __future__ import annotations

import dataclasses
import re
import typing

import pytest

from reclaif.config import Bounds, RunConfig
from reclaif.config_load import load_config
from reclaif.errors import ConfigError


def declared_bounds(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, type, Bounds]]:
    """(dotted key, field type, bounds) of every bounded leaf of the config tree."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += declared_bounds(hints[f.name], prefix + f.name + ".")
        elif "bounds" in f.metadata:
            out.append((prefix + f.name, hints[f.name], f.metadata["bounds"]))
    return out


BOUNDED = declared_bounds()


def _values(tp: type, b: Bounds, inside: bool) -> list[str]:
    """Override values just outside each side of `b` (or on its closed sides, `inside`)."""
    whole = (typing.get_args(tp) or (tp,))[0] is int  # a list's items, or the field itself
    step = 1 if whole else 0.5
    if inside:
        vals = [v for v in (b.ge, b.le) if v is not None]
    else:
        vals = [v for v in (b.gt, b.lt) if v is not None]
        vals += [b.ge - step] if b.ge is not None else []
        vals += [b.le + step] if b.le is not None else []
    vals = [v if whole else float(v) for v in vals]
    return [f"[{v}]" if typing.get_origin(tp) is list else str(v) for v in vals]


def test_the_walk_finds_the_bounds_of_every_section():
    keys = {k for k, _, _ in BOUNDED}
    assert {"seed", "sft.seed", "dpo.seed", "dpo.beta", "sft.lr", "judge.llm.timeout_s",
            "explainability.llm.max_concurrency", "eval.k", "judge.weights", "ray.num_cpus",
            "evidence.folds", "sampling.top_p"} <= keys
    assert len(BOUNDED) > 60


@pytest.mark.parametrize("key, tp, bounds", BOUNDED, ids=[k for k, _, _ in BOUNDED])
def test_every_declared_bound_is_checked_and_names_its_key(key, tp, bounds):
    for value in _values(tp, bounds, inside=False):
        shown = value.strip("[]")
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}(\[0\])?: {re.escape(shown)} "
                                              "must be "):
            load_config(None, [f"{key}={value}"])
    for value in _values(tp, bounds, inside=True):
        if key == "judge.weights":
            value = f"[{value.strip('[]')}, 1, 1]"  # its own check wants three
        load_config(None, [f"{key}={value}"])


def test_a_bound_broken_in_a_file_names_the_file_the_key_and_the_range(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("sampling:\n  top_p: 1.5\ndpo:\n  iterations: 1000\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"c\.yaml: sampling\.top_p: 1\.5 must be in \(0, 1\]$"):
        load_config(f)
    f.write_text("dpo:\n  iterations: 1000\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"c\.yaml: dpo\.iterations: 1000 must be in \[0, 999\] "
                                          r"\(stage names hold three digits"):
        load_config(f)


def test_list_items_are_bounded_one_by_one():
    with pytest.raises(ConfigError, match=r"^eval\.k\[1\]: 0 must be at least 1$"):
        load_config(None, ["eval.k=[1, 0, 5]"])
    with pytest.raises(ConfigError, match=r"^judge\.weights\[2\]: -1\.0 must be at least 0$"):
        load_config(None, ["judge.weights=[1, 1, -1]"])
