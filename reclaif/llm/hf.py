"""Local transformers backend: batched, left-padded sampling with the model's chat template.

Throughput on CPU comes from batching: prompts are sorted by length before they are cut into
batches of `spec.batch_size`, so a batch pads little, and every batch decodes with the KV cache
under `torch.inference_mode`, in reclaif/llm/decode.py's loop, which drops answers as they end
(transformers' `generate` for models that loop does not handle). Outputs are restored to the
callers' order afterwards.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from reclaif.config import LLMSpec
from reclaif.errors import ReclaifError
from reclaif.llm import models
from reclaif.llm.base import Completion, LLMClient

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class GenerationStats:
    """What the last `generate` call did: the bench reads it to report tokens/s."""

    prompts: int = 0
    prompt_tokens: int = 0
    padded_prompt_tokens: int = 0
    generated_tokens: int = 0  # up to and including each sequence's EOS; never padding
    seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


class HFClient(LLMClient):
    """`LLMClient` over a local causal LM (the embedded default, a checkpoint dir, or a hub name)."""

    # "auto": reclaif.llm.decode where the model's cache allows, else transformers' generate;
    # "generate": always generate (the bench's comparison). Settable per client.
    decoder: str = "auto"

    def __init__(self, spec: LLMSpec, model: Any = None, tokenizer: Any = None):
        self.spec = spec
        cache = spec.cache_dir or None
        self.tokenizer = tokenizer if tokenizer is not None else models.load_tokenizer(
            spec.model, cache, trust_remote_code=spec.trust_remote_code)
        self.model = model if model is not None else models.load_causal_lm(
            spec.model, spec.dtype, spec.device, spec.attn_implementation, cache,
            trust_remote_code=spec.trust_remote_code)
        self._prepare()
        self.last_stats = GenerationStats()

    def _prepare(self) -> None:
        # Decoder-only models must be padded on the left, or new tokens follow pad tokens.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.eval()
        self.device = next(self.model.parameters()).device
        self.eos_ids = self._eos_ids()
        from reclaif.llm import decode  # imports transformers: only where a model is loaded

        # reclaif.llm.decode's loop runs this model (else transformers' generate); public: the
        # sampling bench and the GPU check report which decoder ran
        self.own_decode_loop = decode.supports(self.model)

    def _eos_ids(self) -> list[int]:
        """The tokenizer's EOS plus the model's configured ones (chat models end turns with
        their own token, e.g. <|im_end|>, which may differ from the config's eos)."""
        ids: list[int] = []
        for value in (self.tokenizer.eos_token_id,
                      self.model.generation_config.eos_token_id):
            for i in (value if isinstance(value, list) else [value]):
                if i is not None and i not in ids:
                    ids.append(int(i))
        if not ids:
            raise ReclaifError(f"{self.spec.model}: the tokenizer has no EOS token to stop at")
        return ids

    def reload(self, model_path: str) -> None:
        """Swaps in the weights of a new checkpoint (sampler actors, after each DPO iteration)."""
        cache = self.spec.cache_dir or None
        model = models.load_causal_lm(model_path, self.spec.dtype, self.spec.device,
                                      self.spec.attn_implementation, cache,
                                      trust_remote_code=self.spec.trust_remote_code)
        # A trainer may save weights without the tokenizer; DPO never changes the vocabulary.
        local = Path(model_path)
        if local.is_dir() and not any((local / f).exists() for f in TOKENIZER_FILES):
            tokenizer = self.tokenizer
        else:
            tokenizer = models.load_tokenizer(model_path, cache,
                                              trust_remote_code=self.spec.trust_remote_code)
        self.model, self.tokenizer = model, tokenizer
        self.spec = LLMSpec(**{**self.spec.__dict__, "model": model_path})
        self._prepare()

    def render(self, prompt: str) -> str:
        """The prompt as a user turn of the chat template, ready for the assistant's answer."""
        return models.render_chat(self.tokenizer, prompt)

    def prompt_tokens(self, prompt: str) -> int | None:
        return len(self.tokenizer(self.render(prompt), add_special_tokens=False)["input_ids"])

    def context_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def weights_dtype(self) -> str | None:
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    def generate(self, prompts: list[str], n: int = 1, temperature: float = 1.0,
                 top_p: float = 1.0, max_new_tokens: int = 256,
                 seed: int = 0) -> list[list[str]]:
        return [[c.text for c in row] for row in self.sample(
            prompts, n, temperature, top_p, max_new_tokens, seed)]

    def sample(self, prompts: list[str], n: int = 1, temperature: float = 1.0,
               top_p: float = 1.0, max_new_tokens: int = 256,
               seed: int = 0) -> list[list[Completion]]:
        import torch

        if n < 1:
            raise ReclaifError(f"n: {n} must be at least 1")
        stats = GenerationStats(prompts=len(prompts))
        self.last_stats = stats
        if not prompts:
            return []
        t0 = time.perf_counter()
        # Same seed → same outputs: one seeding per call, before any batch.
        torch.manual_seed(seed)
        ids = [self.tokenizer(self.render(p), add_special_tokens=False)["input_ids"]
               for p in prompts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
        out: list[list[Completion]] = [[] for _ in prompts]
        bs = max(1, self.spec.batch_size)
        # A bar only where there is more than one batch to wait for (an evaluation, a bench);
        # a sampler actor's shard is one batch.
        bar = tqdm(total=len(prompts), desc="generate", unit="prompt", leave=False,
                   disable=len(prompts) <= bs)
        for start in range(0, len(order), bs):
            chunk = order[start:start + bs]
            answers = self._generate_batch([ids[i] for i in chunk], n, temperature, top_p,
                                           max_new_tokens, stats)
            for j, i in enumerate(chunk):
                out[i] = answers[j]
            bar.update(len(chunk))
        bar.close()
        stats.seconds = time.perf_counter() - t0
        return out

    def _generate_batch(self, batch_ids: list[list[int]], n: int, temperature: float,
                        top_p: float, max_new_tokens: int,
                        stats: GenerationStats) -> list[list[Completion]]:
        import torch

        from reclaif.llm import decode  # transformers: as in _prepare

        own_loop = self.own_decode_loop and self.decoder == "auto"
        stats.prompt_tokens += sum(len(x) for x in batch_ids)
        stats.padded_prompt_tokens += (decode.prefill_positions(batch_ids) if own_loop else
                                       len(batch_ids) * max(len(x) for x in batch_ids))
        stats.batch_sizes.append(len(batch_ids))
        greedy = temperature <= 0
        # Greedy decoding gives one answer per prompt; n copies of it are what n samples mean.
        rows = 1 if greedy else n
        logps: list[float] | None = [] if own_loop else None
        with torch.inference_mode():
            if own_loop:  # lays out its own rows: no padded batch here
                new = decode.sample(self.model, batch_ids, rows, temperature, top_p,
                                    max_new_tokens, self.eos_ids, self.tokenizer.pad_token_id,
                                    logps)
            else:
                enc = self.tokenizer.pad({"input_ids": batch_ids}, padding=True,
                                         return_tensors="pt")
                new = self._hf_generate(enc["input_ids"].to(self.device),
                                        enc["attention_mask"].to(self.device), rows,
                                        temperature, top_p, max_new_tokens)
        texts: list[list[Completion]] = []
        for b in range(len(batch_ids)):
            answers = []
            for r in range(rows):
                tokens = new[b * rows + r]
                stop = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
                kept = tokens if stop is None else tokens[:stop]
                stats.generated_tokens += len(kept) + (0 if stop is None else 1)
                # No end of turn among the new tokens: the answer ran into max_new_tokens
                # (padding after an early EOS never reaches here: stop is found first).
                answers.append(Completion(
                    self.tokenizer.decode(kept, skip_special_tokens=True).strip(),
                    truncated=stop is None,
                    token_ids=list(tokens if stop is None else tokens[:stop + 1]),
                    logp=None if logps is None else logps[b * rows + r]))
            texts.append(answers * n if greedy else answers)
        return texts

    def _hf_generate(self, input_ids: Any, attention: Any, rows: int, temperature: float,
                     top_p: float, max_new_tokens: int) -> list[list[int]]:
        from transformers import GenerationConfig

        greedy = temperature <= 0
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=not greedy, num_return_sequences=rows,
            eos_token_id=self.eos_ids, pad_token_id=self.tokenizer.pad_token_id, use_cache=True,
            **({} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}))
        seqs = self.model.generate(input_ids=input_ids, attention_mask=attention,
                                   generation_config=config)
        return seqs[:, input_ids.shape[1]:].tolist()
