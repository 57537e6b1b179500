"""Loading a run config, generic over the schema in reclaif.config: YAML text (size-capped),
dotted `key=value` overrides, each value converted to its field's type, then every field
checked against its declaration (a Literal's values, a finite number, its bounds, its own
check) before `config.validate`'s rules across fields. Every error names the key, and the
file where there is one. Also the way back (`dump_config`) and `describe` (`config show`).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from reclaif.config import RETIRED_KEYS, Bounds, RunConfig, literal_values, validate
from reclaif.errors import ConfigError


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Loads a YAML run config (or the defaults), applies overrides, checks every field
    against its declaration, then the rules across fields (`config.validate`)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        try:
            data = load_yaml(read_config_text(p), str(p)) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    data = apply_overrides(data, overrides or [])
    try:
        cfg = from_dict(RunConfig, data)
        check_fields(cfg)
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    return cfg




def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def check_fields(node: Any, prefix: str = "") -> None:
    """Every field of a config tree (each item of a list field alike) holds one of its Literal's
    values, is a finite number where it is a number, lies in its bounds and passes its check."""
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            check_fields(value, key + ".")
            continue
        allowed, bounds = literal_values(hints[f.name]), f.metadata.get("bounds")
        items = [(f"{key}[{i}]", v) for i, v in enumerate(value)] \
            if isinstance(value, list) else [(key, value)]
        for where, v in items:
            if allowed is not None and v not in allowed:
                raise ConfigError(f"{where}: '{v}' is not one of {list(allowed)}"
                                  + (" (use [] for none)" if isinstance(value, list) else ""))
            # NaN passes every comparison with a bound (all are False): refuse it first
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{where}: {v} is not a finite number")
            if bounds is not None and not _within(v, bounds):
                why = f" ({bounds.why})" if bounds.why else ""
                raise ConfigError(f"{where}: {v} must be {_range(bounds)}{why}")
        check = f.metadata.get("check")
        problem = check(value) if check is not None else None
        if problem:
            raise ConfigError(f"{key}: {problem}")


def _within(v: float, b: Bounds) -> bool:
    return ((b.ge is None or v >= b.ge) and (b.gt is None or v > b.gt)
            and (b.le is None or v <= b.le) and (b.lt is None or v < b.lt))


def _range(b: Bounds) -> str:
    """'at least 1', 'greater than 0', 'in (0, 1]', 'in [0, 2**32)' ..."""
    low = ("[", b.ge) if b.ge is not None else ("(", b.gt) if b.gt is not None else None
    high = ("]", b.le) if b.le is not None else (")", b.lt) if b.lt is not None else None
    if low and high:
        return f"in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    if low:
        return f"{'at least' if low[0] == '[' else 'greater than'} {_number(low[1])}"
    assert high is not None
    return f"{'at most' if high[0] == ']' else 'below'} {_number(high[1])}"


def _number(x: float) -> str:
    """A bound as a reader writes it: 2**32, not 4294967296."""
    if isinstance(x, int) and x >= 1 << 16 and x & (x - 1) == 0:
        return f"2**{x.bit_length() - 1}"
    return str(x)


@dataclass(frozen=True)
class Key:
    """One leaf of a config tree, as `reclaif config show` prints it."""
    key: str       # dotted, e.g. dpo.beta
    value: Any
    default: Any
    help: str
    section: str   # the help of the section it is in, e.g. "DPO iterations."
    choices: tuple[str, ...] = ()  # a closed set's values (of a list's items, for a list)


def describe(cfg: Any, default: Any = None, prefix: str = "", section: str = "") -> list[Key]:
    """Every leaf key of `cfg` with its value, its default (from `default`, else the defaults
    of cfg's type) and its help, in declaration order."""
    default = type(cfg)() if default is None else default
    hints = typing.get_type_hints(type(cfg))
    out = []
    for f in dataclasses.fields(cfg):
        value, key, text = getattr(cfg, f.name), prefix + f.name, f.metadata.get("help", "")
        if dataclasses.is_dataclass(value):
            out += describe(value, getattr(default, f.name), key + ".", text)
        else:
            out.append(Key(key, value, getattr(default, f.name), text, section,
                           literal_values(hints[f.name]) or ()))
    return out




def _check(value: Any, tp: Any, key: str) -> Any:
    """Converts/validates one value against a dataclass field type, naming `key` on error."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key + ".")
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp)[:1]
        return [_check(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check(value, args[0], key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str or origin is Literal:  # a Literal's values are checked by check_fields
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Builds dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    data = {k: v for k, v in data.items() if f"{prefix}{k}" not in RETIRED_KEYS}
    for k in data:
        if k not in names:
            close = [n for n in names if n.startswith(str(k)[:3])]
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{k}'{hint}")
    kwargs = {k: _check(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies `a.b.c=value` strings (value parsed as YAML) to a nested mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw, f"override '{key}'") if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{key}': '{p}' is not a section")
        node[parts[-1]] = value
    return data


# A run config is a few KB and a few hundred values. Aliases are allowed (the shipped configs
# share one LLM spec with `&claude`/`*claude`), but each alias counts as the whole subtree it
# repeats, so a "billion laughs" file (aliases of aliases of lists) is refused before it is
# built, instead of taking a minute and gigabytes on its way to a MemoryError.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000


def load_yaml(text: str, where: str) -> Any:
    """YAML text → Python values (safe types only), refusing configs too big once expanded."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: {len(text)} characters; a config is at most "
                          f"{MAX_CONFIG_BYTES}")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}

        def expanded(n: yaml.Node) -> int:
            if id(n) not in sizes:
                sizes[id(n)] = 0  # a cycle (a key that holds itself) counts once, no recursion
                if isinstance(n, yaml.MappingNode):
                    total = sum(expanded(k) + expanded(v) for k, v in n.value)
                elif isinstance(n, yaml.SequenceNode):
                    total = sum(expanded(v) for v in n.value)
                else:
                    total = 0
                sizes[id(n)] = min(1 + total, MAX_CONFIG_VALUES + 1)
            return sizes[id(n)]

        if expanded(node) > MAX_CONFIG_VALUES:
            raise ConfigError(f"{where}: more than {MAX_CONFIG_VALUES:,} values once its YAML "
                              "aliases are expanded; a run config is far smaller (an alias "
                              "bomb?)")
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def read_config_text(p: Path) -> str:
    """A config file's text; not UTF-8 is a ConfigError naming the byte offset."""
    try:
        return p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                          f"{e.start}); save the file as UTF-8") from None
