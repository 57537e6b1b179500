"""Declared floors are what the code needs: the APIs named beside each floor in setup.py exist
in the installed versions, and the floors are not below the releases that introduced them."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from packaging.version import Version

SETUP = (Path(__file__).resolve().parents[1] / "setup.py").read_text()


def _floor(name: str) -> Version:
    return Version(re.search(rf'"{name}>=([\d.]+)"', SETUP).group(1))


def test_transformers_floor_has_the_cache_api_decode_uses():
    from transformers.cache_utils import DynamicLayer  # noqa: F401  (4.54+)

    assert _floor("transformers") >= Version("4.56")  # from_pretrained(dtype=...): 4.56


def test_torch_floor_has_per_device_autocast_queries():
    assert torch.is_autocast_enabled("cpu") in (True, False)
    assert torch.get_autocast_dtype("cpu") is not None
    assert _floor("torch") >= Version("2.4")
