"""A run's config, the one way it is read: `load_run_config`.

A run directory's config.yaml is frozen at the first start, and the manifest records its sha256
(`pipeline/store.RunStore.freeze_config`). Every reader (the driver's commands, `reclaif train`
in a launched process, the evidence of a checkpoint, `reclaif recommend`, the report) goes
through `load_run_config`, so a damaged or edited file is one line saying so, never a half
config's field error, and overrides and checks apply the same way everywhere. Here, below the
evidence models and the recommender that read a checkpoint's run, not in `pipeline/`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from reclaif.atomic import read_json
from reclaif.config import RunConfig
from reclaif.config_load import build_config, from_dict, load_config, read_config_file
from reclaif.errors import ConfigError, ReclaifError

CONFIG = "config.yaml"
MANIFEST = "manifest.json"


def read_manifest(root: str | Path) -> dict[str, Any]:
    """RUN/manifest.json ({"phases": {}} where there is none); damaged, one line saying so."""
    path = Path(root) / MANIFEST
    if not path.exists():
        return {"phases": {}}
    m = read_json(path)
    if not isinstance(m, dict) or not isinstance(m.get("phases"), dict):
        raise ReclaifError(f"{path}: damaged (no 'phases' mapping); restore it from a backup, "
                           "or delete it to redo every phase")
    return m


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_config_file(root: str | Path) -> str:
    """Refuses a config.yaml that is not the one this run was frozen with (cut short by a full
    disk, or edited). Returns the message a later load error is prefixed with."""
    path = Path(root) / CONFIG
    if not path.exists():
        raise ReclaifError(f"{root}: not a run directory (no config.yaml)")
    recorded = read_manifest(root).get("frozen", {}).get("config_sha256")
    damaged = (f"{path}: does not match the config this run was frozen with (damaged or "
               "edited); restore it, or start a new --run-dir")
    if recorded is not None and sha256_of(path) != recorded:
        raise ConfigError(damaged)
    return damaged


def load_run_config(run_dir: str | Path | None, config: str | Path | None = None,
                    overrides: list[str] | None = None, *, or_defaults: bool = False
                    ) -> RunConfig:
    """The config a run runs with: `config` where one is named; else the run directory's
    frozen config.yaml, checked against the sha256 its manifest recorded; else, with
    `or_defaults` (a first `reclaif run` without --config), the defaults. `overrides` apply on
    top, and every field and rule is checked, whichever the source."""
    if config is not None:
        return load_config(config, overrides)
    path = Path(run_dir) / CONFIG if run_dir is not None else None
    if path is None or not path.exists():
        if or_defaults:
            return load_config(None, overrides)
        raise ConfigError(f"{run_dir}: not a run directory (no config.yaml); name a config "
                          "file, or the --run-dir of a reclaif run")
    damaged = check_config_file(path.parent)
    try:  # the file alone: what fails here is the file's, not an override's
        data = read_config_file(path)
        from_dict(RunConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{damaged} ({e})") from None
    return build_config(data, overrides, path)
