"""vLLM backend (GPU): an in-process engine for fast sampling at production scale.

vLLM is optional and GPU-only, so it is imported when this client is built, with an error that
says what to do; nothing else in reclaif imports it.
"""
from __future__ import annotations

from typing import Any

from reclaif.config import LLMSpec
from reclaif.errors import ReclaifError
from reclaif.llm import models
from reclaif.llm.base import Completion, LLMClient


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ReclaifError("backend 'vllm' needs the vllm package (GPU only): pip install vllm, "
                           f"or use backend 'hf' ({e})") from None
    return vllm


def engine_args(spec: LLMSpec, model_path: str) -> dict[str, Any]:
    """vllm.LLM's arguments from the spec: the sampler's dtype and its share of GPU memory are
    config fields (recommender.dtype, recommender.gpu_memory_utilization)."""
    return {"model": model_path, "dtype": spec.dtype,
            "gpu_memory_utilization": spec.gpu_memory_utilization,
            "trust_remote_code": spec.trust_remote_code}


class VLLMClient(LLMClient):
    """`LLMClient` over `vllm.LLM`; the chat template is applied with the model's tokenizer."""

    def __init__(self, spec: LLMSpec, llm: Any = None):
        self.spec = spec
        self._vllm = _import_vllm()
        self.model_path = models.resolve_model(spec.model, spec.cache_dir or None)
        if llm is None:
            llm = self._vllm.LLM(**engine_args(spec, self.model_path))
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()

    def reload(self, model_path: str) -> None:
        """Refused: `del self.llm` and a new engine in the same process does not give vLLM's
        GPU memory back (its workers and CUDA graphs stay), so a second engine would not fit.
        New weights reach a vLLM sampler as a new actor: the driver releases the sampler pool
        (waiting until its processes are gone) and starts one on the new checkpoint."""
        raise ReclaifError(f"vllm: cannot swap {self.model_path} for {model_path} in a running "
                           f"engine (its GPU memory would not be freed); start a new sampler "
                           f"actor for the new checkpoint")

    def render(self, prompt: str) -> str:
        return models.render_chat(self.tokenizer, prompt)

    def prompt_tokens(self, prompt: str) -> int | None:
        return len(self.tokenizer(self.render(prompt), add_special_tokens=False)["input_ids"])

    def context_length(self) -> int | None:
        return self.llm.llm_engine.model_config.max_model_len

    def generate(self, prompts: list[str], n: int = 1, temperature: float = 1.0,
                 top_p: float = 1.0, max_new_tokens: int = 256,
                 seed: int = 0) -> list[list[str]]:
        return [[c.text for c in row] for row in self.sample(
            prompts, n, temperature, top_p, max_new_tokens, seed)]

    def sample(self, prompts: list[str], n: int = 1, temperature: float = 1.0,
               top_p: float = 1.0, max_new_tokens: int = 256,
               seed: int = 0) -> list[list[Completion]]:
        if not prompts:
            return []
        greedy = temperature <= 0
        params = self._vllm.SamplingParams(
            n=1 if greedy else n, temperature=max(0.0, temperature),
            top_p=1.0 if greedy else top_p, max_tokens=max_new_tokens, seed=seed)
        outputs = self.llm.generate([self.render(p) for p in prompts], params, use_tqdm=False)
        result = []
        for out in outputs:
            # vLLM's finish_reason: "stop" (EOS or a stop string) or "length" (max_tokens)
            answers = [Completion(c.text.strip(), truncated=c.finish_reason == "length")
                       for c in out.outputs]
            result.append(answers * n if greedy else answers)
        return result
