"""Batched sampling that drops finished answers: the hf backend's decode loop.

Written by hand because transformers' `generate` leaves throughput on the table where batching
is all a CPU has (`reclaif bench sampling --with-generate`: this loop 1.3-1.7x its tokens/s at a
batch of 16 on 2 cores):
  * it decodes every row until the longest answer of the batch ends, so rows that already
    emitted EOS keep paying for their matmuls and attention;
  * its dynamic KV cache concatenates every layer's keys and values into new tensors at each
    step (a fifth of a batch-16 step by torch.profiler; its static cache attends over the whole
    preallocated length instead and measured no faster);
  * it prefills the n samples of a prompt n times, and the prefix every prompt of the batch
    shares (the template's head) once per prompt;
  * its nucleus filter sorts the whole vocabulary at every step (a quarter of a batch-16 step).
Here each layer's cache is one buffer of the final length, written in place and read through a
view of the filled part; rows that finished leave the batch (the buffers are compacted once a
quarter of the rows are done, so each copy pays for many steps); a prompt is prefilled once for
its n samples and the batch's shared prefix once for all; the nucleus comes from a top-k.

Sampling follows `generate`'s: temperature, then nucleus (top-p) filtering, then a draw from
torch's global generator (the caller seeds it); temperature 0 is greedy. Models whose cache is
not plain full attention (sliding windows, linear attention) go through `generate` instead:
`supports(model)` says which.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class _BufferLayer(DynamicLayer):
    """One layer's KV cache: a [rows, heads, capacity, dim] buffer filled in place."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.filled = capacity, 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        rows, heads, _, dim = key_states.shape
        self.k_buf = key_states.new_empty(rows, heads, self.capacity, dim)
        self.v_buf = value_states.new_empty(rows, heads, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any,
               **kwargs: Any) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.filled + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache full: {end} > {self.capacity} positions")
        self.k_buf[:, :, self.filled:end] = key_states
        self.v_buf[:, :, self.filled:end] = value_states
        self.filled = end
        self._views()
        return self.keys, self.values

    def _views(self) -> None:
        self.keys = self.k_buf[:, :, :self.filled]
        self.values = self.v_buf[:, :, :self.filled]

    def get_seq_length(self) -> int:
        return self.filled

    def batch_select_indices(self, indices: Tensor) -> None:
        if self.is_initialized:
            self.k_buf, self.v_buf = self.k_buf[indices], self.v_buf[indices]
            self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.k_buf = self.k_buf.repeat_interleave(repeats, dim=0)
            self.v_buf = self.v_buf.repeat_interleave(repeats, dim=0)
            self._views()


def full_attention_cache(config: Any) -> DynamicCache | None:
    """transformers' dynamic cache for a model of `config` where every layer's is plain full
    attention (DynamicLayer: no sliding window, no linear attention), else None. Also SFT's
    shared prompt head (reclaif.train.shared_head)."""
    cache = DynamicCache(config=config)
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    return cache


def _cache(model: Any, capacity: int) -> DynamicCache | None:
    cache = full_attention_cache(model.config)
    if cache is not None:
        cache.layers = [_BufferLayer(capacity) for _ in cache.layers]
    return cache


def supports(model: Any) -> bool:
    """True where every layer's cache is plain full attention (llama, mistral without a sliding
    window, qwen2, ...) and the forward takes position ids and `logits_to_keep` (a model's own
    remote code may not): the loop below handles those; other models use `generate`."""
    params = inspect.signature(model.forward).parameters
    takes = all(k in params for k in ("position_ids", "logits_to_keep"))
    return takes and cache_arg(model.forward) is not None and _cache(model, 1) is not None


def cache_arg(forward: Any) -> str | None:
    """The forward's name for the KV cache, from its signature: `cache` from transformers 5.24
    (which deprecates `past_key_values`, the name before it); None where it takes neither."""
    params = inspect.signature(forward).parameters
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def _next_tokens(logits: Tensor, temperature: float, top_p: float) -> Tensor:
    """One token per row of logits [rows, V]: greedy at temperature <= 0, else a draw after
    temperature and nucleus filtering (the smallest set of tokens holding top_p of the mass)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = (logits.float() / temperature).softmax(-1)
    if top_p >= 1.0:
        return torch.multinomial(probs, 1).squeeze(1)
    # The nucleus from the top k tokens, k grown until every row's top k hold top_p: exact,
    # and a full sort of the vocabulary (what `generate` does) cost a quarter of a batch-16
    # decode step on CPU.
    # (SmolLM2's nucleus at T=1, p=0.95 is often thousands of tokens wide: start at 1024.)
    vocab, k = probs.shape[-1], min(probs.shape[-1], 1024)
    while True:
        top, index = probs.topk(k, dim=-1)
        cum = top.cumsum(-1)
        if k == vocab or bool((cum[:, -1] >= top_p).all()):
            break
        k = min(vocab, k * 8)
    # drop a token when the tokens ranked above it already hold top_p (the first stays)
    top = top.masked_fill(cum - top > top_p, 0.0)
    return index.gather(1, torch.multinomial(top, 1)).squeeze(1)


@contextmanager
def _lm_head_weight_first(model: Any) -> Iterator[None]:
    """On CPU, the output layer as W @ h.T: for a few rows against a wide vocabulary MKL runs it
    1.3-3x faster than h @ W.T (SmolLM2's [49152, 576] head at 16 rows: ~15 vs ~35 ms of a
    ~200 ms decode step). Same values; the module's forward is restored on exit."""
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.weight.device.type != "cpu":
        yield
        return

    def forward(x: Tensor) -> Tensor:
        y = torch.mm(head.weight, x.reshape(-1, x.shape[-1]).t()).t()
        y = y.reshape(*x.shape[:-1], head.weight.shape[0])
        return y if head.bias is None else y + head.bias

    head.forward = forward
    try:
        yield
    finally:
        del head.forward


def _shared_prefix(prompts: list[list[int]]) -> int:
    """Tokens at the start of every prompt (leaving each at least one of its own)."""
    if len(prompts) < 2:
        return 0
    shortest = min(len(ids) for ids in prompts)
    length = 0
    while length < shortest - 1 and all(ids[length] == prompts[0][length] for ids in prompts):
        length += 1
    return length if length >= MIN_SHARED_PREFIX else 0


MIN_SHARED_PREFIX = 16  # below this a separate prefill call costs more than it saves


def prefill_positions(prompts: list[list[int]]) -> int:
    """Prompt positions `sample` prefills, pads included: the shared prefix once, then every
    prompt's own part padded to the longest."""
    shared = _shared_prefix(prompts)
    return shared + len(prompts) * max(len(ids) - shared for ids in prompts)


def sample(model: Any, prompts: list[list[int]], n: int, temperature: float, top_p: float,
           max_new_tokens: int, eos_ids: list[int], pad_id: int = 0,
           logps: list[float] | None = None) -> list[list[int]]:
    """New tokens of n answers per prompt (row r*n + j is prompt r's j-th), each cut after its
    first EOS (kept) or at max_new_tokens. prompts: token ids, unpadded. `logps`, where given,
    receives each answer's summed log-probs of its tokens under the model's own softmax
    (untempered, unfiltered: the policy's, what a DPO reference pass computes).

    Prompts rendered from one template begin alike (the system turn and the task's head: 90 of
    the ~460 tokens of a LastFM recommender prompt), so the batch's shared prefix is prefilled
    once and copied to every row; each row's own part follows, left-padded behind it:
    [shared | pad | own]. Positions count only real tokens, so the pads change nothing."""
    with _lm_head_weight_first(model):
        return _sample(model, prompts, n, temperature, top_p, max_new_tokens, eos_ids, pad_id,
                       logps)


def _sample(model: Any, prompts: list[list[int]], n: int, temperature: float, top_p: float,
            max_new_tokens: int, eos_ids: list[int], pad_id: int,
            logps: list[float] | None) -> list[list[int]]:
    device = next(model.parameters()).device
    arg = cache_arg(model.forward)
    shared = _shared_prefix(prompts)
    own = [ids[shared:] for ids in prompts]
    width = max(len(ids) for ids in own)
    plen = shared + width
    cache = _cache(model, plen + max_new_tokens)
    if cache is None:
        raise ValueError(f"{type(model).__name__}: its KV cache is not plain full attention; "
                         "use model.generate")
    rows = len(prompts) * n
    mask = torch.zeros(len(prompts), plen + max_new_tokens, dtype=torch.long, device=device)
    mask[:, :shared] = 1
    for r, ids in enumerate(own):
        mask[r, plen - len(ids):plen] = 1
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in own], device=device)
    positions = (mask[:, :plen].cumsum(-1) - 1).clamp(min=0)
    if shared:
        head = torch.tensor([prompts[0][:shared]], device=device)
        model(input_ids=head, attention_mask=mask[:1, :shared], position_ids=positions[:1, :shared],
              use_cache=True, **{arg: cache}, logits_to_keep=1)
        cache.batch_repeat_interleave(len(prompts))
    out = model(input_ids=input_ids, attention_mask=mask[:, :plen],
                position_ids=positions[:, shared:], use_cache=True, **{arg: cache},
                logits_to_keep=1)
    logits = out.logits[:, -1]
    if n > 1:  # the n samples of a prompt share its prefill
        cache.batch_repeat_interleave(n)
        logits, mask = logits.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
    position = positions[:, -1:].repeat_interleave(n, dim=0)
    eos = torch.tensor(eos_ids, device=device)
    answers: list[list[int]] = [[] for _ in range(rows)]
    sums = [0.0] * rows
    live = list(range(rows))  # answer index of each buffer row still decoding (-1: done)
    for step in range(max_new_tokens):
        tokens = _next_tokens(logits, temperature, top_p)
        # one device-to-host copy per step for the tokens and their end flags
        host_tokens, ended = torch.stack([tokens, torch.isin(tokens, eos).long()]).tolist()
        for row, token in zip(live, host_tokens):
            if row >= 0:
                answers[row].append(token)
        if logps is not None:
            chosen = logits.float().log_softmax(-1).gather(1, tokens[:, None]).squeeze(1)
            for row, value in zip(live, chosen.tolist()):
                if row >= 0:
                    sums[row] += value
        live = [-1 if (row < 0 or end) else row for row, end in zip(live, ended)]
        active = [i for i, row in enumerate(live) if row >= 0]
        if not active or step + 1 == max_new_tokens:
            break
        if len(live) - len(active) >= max(1, len(live) // 4):
            keep = torch.tensor(active, device=device)
            cache.batch_select_indices(keep)
            tokens, position, mask = tokens[keep], position[keep], mask[keep]
            live = [live[i] for i in active]
        end = plen + step + 1
        mask[:, end - 1] = 1
        position = position + 1
        out = model(input_ids=tokens[:, None], attention_mask=mask[:, :end],
                    position_ids=position, use_cache=True, **{arg: cache},
                    logits_to_keep=1)
        logits = out.logits[:, -1]
    if logps is not None:
        logps[:] = sums
    return answers
