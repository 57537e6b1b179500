"""LLM clients behind one protocol (`LLMClient`, base.py): hf, vllm, bedrock, openai_compat.

`make_client(spec)` is the one place a backend name becomes a client; each backend module is
imported only when chosen, so a Bedrock judge never imports torch and vLLM is never required.
"""
from __future__ import annotations

from reclaif.config import LLMSpec, choices
from reclaif.errors import ConfigError
from reclaif.llm.base import LLMClient
from reclaif.llm.bedrock import BedrockClient
from reclaif.llm.hf import HFClient
from reclaif.llm.openai_compat import OpenAICompatClient
from reclaif.llm.vllm_client import VLLMClient

BACKENDS = choices(LLMSpec, "backend")


def make_client(spec: LLMSpec) -> LLMClient:
    """The client for `spec.backend`; local backends load their model here."""
    if spec.backend == "hf":

        return HFClient(spec)
    if spec.backend == "vllm":

        return VLLMClient(spec)
    if spec.backend == "bedrock":

        return BedrockClient(spec)
    if spec.backend == "openai_compat":

        return OpenAICompatClient(spec)
    raise ConfigError(f"backend: '{spec.backend}' is not one of {list(BACKENDS)}")


__all__ = ["BACKENDS", "LLMClient", "make_client"]
