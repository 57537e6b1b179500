"""The shared prompt head: a micro-batch's common token prefix runs through the model once (SFT's
rows here; DPO's packed pair rows through run_over_head, reclaif.train.fused_dpo.pair_hidden).

Every recommender prompt starts with the same instruction block (ARCHITECTURE.md, "Data flow":
~310 tokens of a ~820-token hybrid LastFM prompt), so a micro-batch of B examples runs it B
times. Here the longest prefix common to the batch's rows (the head, `common_head`) is run once,
as one row, with the KV cache on; its per-layer keys and values are expanded to B rows (a view:
autograd sums the B rows' gradients back into the head's one computation) and each row's
remainder runs as a batch over that cache, positions continuing from the head, its padding
masked. The loss then comes from the remainder's hidden states through the same chunked kernel
(logprobs.sequence_logps). Every token sees the keys and values it sees in its own row, so the
log-probs and every parameter's gradient are the separate rows' up to fp32 rounding
(tests/test_sft_shared_head.py).

The head stops before each row's last prompt token: that token predicts the row's first answer
token, so its hidden state must come out of the remainder's forward.

Not one packed row under a dense 4D mask (what DPO's shared prompt does per pair): for B=4 rows
of ~930 tokens the packed row is ~2,770 tokens, and a dense mask makes attention compute all its
7.7M query-key pairs against the ~1.7M causal pairs of 4 separate rows: for SmolLM2-135M (30
layers x 576) ~410 GFLOP more attention per forward, against ~250 GFLOP of 3 x 310 head tokens.

Under gradient checkpointing transformers' decoder layers drop the KV cache (their recompute
would write it twice), so the remainder would not see the head: `head_support` refuses that,
as it refuses attention that is not eager or sdpa (not tested here) and models whose cache is
not plain full attention (a sliding window keeps only part of the head).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from reclaif.config import SHARED_PROMPT_ATTENTION
from reclaif.llm.decode import cache_arg, full_attention_cache
from reclaif.train.logprobs import body_and_weight, sequence_logps, shifted_labels

MIN_HEAD = 2  # a head of 0 or 1 tokens saves nothing worth a second forward: the plain path


def _first_predictor(seq: dict[str, list[int]]) -> int:
    """The position whose hidden state predicts the row's first counted token (its last prompt
    token); the row's last position where nothing counts."""
    mask = seq["loss_mask"]
    return next((t - 1 for t in range(1, len(mask)) if mask[t]), len(mask) - 1)


def common_head(seqs: Sequence[dict[str, list[int]]]) -> int:
    """Tokens at the start of every encoded row that may run once for all (the shared head):
    their longest common prefix, stopped before any row's first predictor. 0 (the plain
    path) for a single row or a head under MIN_HEAD tokens."""
    if len(seqs) < 2:
        return 0
    limit = min(_first_predictor(s) for s in seqs)
    first = seqs[0]["input_ids"]
    n = 0
    while n < limit and all(s["input_ids"][n] == first[n] for s in seqs[1:]):
        n += 1
    return n if n >= MIN_HEAD else 0


def batch_head(batch: dict[str, Tensor]) -> int:
    """common_head of a right-padded batch's rows (input_ids, attention_mask, loss_mask)."""
    n = batch["attention_mask"].sum(1).tolist()
    return common_head([{k: batch[k][b, :m].tolist() for k in ("input_ids", "loss_mask")}
                        for b, m in enumerate(n)])


def head_support(model: torch.nn.Module) -> str | None:
    """Why this loaded model cannot run the shared head (None: it can)."""
    return _body_support(body_and_weight(model)[0])


def _body_support(body: torch.nn.Module) -> str | None:
    attn = body.config._attn_implementation
    if attn not in SHARED_PROMPT_ATTENTION:
        return (f"the model runs {attn} attention; the shared head is tested with "
                f"{' and '.join(SHARED_PROMPT_ATTENTION)} only")
    # what transformers' is_gradient_checkpointing reads (renamed in 5.x: asked directly)
    if any(getattr(m, "gradient_checkpointing", False) is True for m in body.modules()):
        return ("gradient checkpointing is on, and under it transformers' layers drop the KV "
                "cache the remainders read the head from")
    if cache_arg(body.forward) is None or full_attention_cache(body.config) is None:
        return (f"{type(body).__name__}'s KV cache is not plain full attention (a sliding "
                "window or linear attention would keep only part of the head)")
    return None


def _hidden(out: Any) -> Tensor:
    # A ModelOutput, or a tuple where the model's config sets return_dict=False.
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _expand(cache: Any, rows: int) -> None:
    """The head's keys and values as `rows` rows: views, not copies, so autograd sums the rows'
    gradients into the head's one computation."""
    for layer in cache.layers:
        layer.keys = layer.keys.expand(rows, -1, -1, -1)
        layer.values = layer.values.expand(rows, -1, -1, -1)


def run_over_head(body: torch.nn.Module, head_ids: Tensor, input_ids: Tensor,
                  attention_mask: Tensor, position_ids: Tensor) -> Tensor:
    """Final hidden states [B, R, H] of input_ids [B, R] run over the keys and values of
    head_ids [1, P], which run once, with the cache on, for all B rows. attention_mask covers
    the head and the rows: [B, P + R], or an additive [B, 1, R, P + R] taken as it is;
    position_ids [B, R] continue from P."""
    why = _body_support(body)
    if why is not None:
        raise ValueError(f"shared prompt head: {why}")
    arg = cache_arg(body.forward)
    cache = full_attention_cache(body.config)
    body(input_ids=head_ids, use_cache=True, **{arg: cache})
    _expand(cache, input_ids.shape[0])
    return _hidden(body(input_ids=input_ids, attention_mask=attention_mask,
                        position_ids=position_ids, use_cache=True, **{arg: cache}))


def head_sequence_logps(model: torch.nn.Module, head_ids: Tensor, input_ids: Tensor,
                        attention_mask: Tensor, loss_mask: Tensor, chunk_size: int = 1024,
                        kernel: str = "auto", weight_grad_acc: str = "fp32"
                        ) -> tuple[Tensor, Tensor]:
    """model_sequence_logps of the rows [head | remainder b] with the head run once:
    (log-prob sums [B] fp32, token counts [B]). input_ids, attention_mask, loss_mask: the
    remainders as data.split_head pads them. `model`: the HF model or the DeepSpeed engine."""
    body, weight = body_and_weight(model)
    (B, R), P = input_ids.shape, head_ids.shape[1]
    mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)
    positions = torch.arange(P, P + R, device=input_ids.device).expand(B, R)
    hidden = run_over_head(body, head_ids, input_ids, mask, positions)
    labels = shifted_labels(input_ids, attention_mask, loss_mask)
    return sequence_logps(hidden, weight, labels, chunk_size, kernel=kernel,
                          weight_grad_acc=weight_grad_acc)
