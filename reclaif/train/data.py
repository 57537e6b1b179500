"""Training data: chat-templated tokenisation, loss masks, padding, and a resumable batch order.

A prompt is the rendered user message; it goes through the tokenizer's chat template with the
generation prompt (exactly as the samplers render it, reclaif.llm.hf), and the response follows
with the end-of-turn token, so the model learns to stop. Only response tokens carry loss
(paper Eq. 1). A prompt is never cut: prompts are fitted when rendered (fewer candidates,
reclaif.recommender), and an answer that still does not fit loses its end, or the example is
refused (answer_room). DPO pairs keep one prompt for both answers (encode_pair).

The batch order is a pure function of (seed, epoch, rank): a rerun that skips the batches a
train_state checkpoint consumed sees exactly the batches the crashed run would have seen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from reclaif.errors import DataError
from reclaif.train.logprobs import shifted_labels
from reclaif.llm.models import render_chat


def render_prompt(tokenizer: Any, prompt: str) -> str:
    """The prompt as a user turn, exactly as the samplers render it."""

    return render_chat(tokenizer, prompt)


def _end_ids(tokenizer: Any) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def prompt_tokens(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt's token ids as encode and encode_pair lay them out (the chat template)."""
    return tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def answer_tokens(tokenizer: Any, answer: str, ended: bool = True) -> list[int]:
    """The answer's token ids, with the end-of-turn token only where the answer `ended`."""
    return (tokenizer(answer, add_special_tokens=False)["input_ids"]
            + (_end_ids(tokenizer) if ended else []))


def answer_room(example_id: str, prompt: int, answer: int, max_length: int) -> int:
    """How many answer tokens fit after the whole prompt. Prompts are never cut (they were
    fitted when rendered: reclaif.recommender.fit_candidates); an answer is cut from the
    right only while a quarter of max_length stays for it, else the example is refused."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    room = max_length - prompt
    if prompt + answer > max_length and room < max(1, min(answer, max_length // 4)):
        raise DataError(f"example {example_id}: prompt {prompt} + answer {answer} tokens is "
                        f"over max_length {max_length}, and the prompt leaves {room} for the "
                        "answer; prompts are never cut: render it with fewer candidates "
                        "(recommender.fit_candidates) or raise max_length")
    return room


def encode(tokenizer: Any, prompt: str, response: str, max_length: int,
           example_id: str = "?") -> dict[str, list[int]]:
    """input_ids = chat(prompt) + response + eos; loss_mask is 1 on response (and eos) only.
    Too long: see answer_room (the prompt whole, the response cut from the right)."""
    p, r = prompt_tokens(tokenizer, prompt), answer_tokens(tokenizer, response)
    r = r[:answer_room(example_id, len(p), len(r), max_length)]
    return {"input_ids": p + r, "loss_mask": [0] * len(p) + [1] * len(r)}


def encode_sft(tokenizer: Any, rows: list[dict], max_length: int) -> list[dict]:
    """teacher.jsonl rows {id, prompt, response} → encoded examples."""
    return [{"id": str(r["id"]), **encode(tokenizer, r["prompt"], r["response"], max_length,
                                          str(r["id"]))}
            for r in rows]


def encode_pair(tokenizer: Any, prompt: str, chosen: str, rejected: str,
                max_length: int, chosen_truncated: bool = False,
                rejected_truncated: bool = False, example_id: str = "?",
                chosen_ids: list[int] | None = None,
                rejected_ids: list[int] | None = None) -> dict[str, dict[str, list[int]]]:
    """A preference pair whose chosen and rejected sequences share the SAME prompt tokens, so
    DPO compares the two answers to one context. Too long: the answers are cut from the right
    to what the whole prompt leaves (answer_room). A truncated answer (stopped at
    max_new_tokens) gets no end-of-turn token: it never emitted one. `*_ids`: the answer's
    tokens as sampled (end of turn included where emitted), used as they are instead of
    re-tokenising its text, so DPO trains the tokens the policy generated."""
    p = prompt_tokens(tokenizer, prompt)
    answers = [list(ids) if ids else answer_tokens(tokenizer, a, not capped)
               for a, capped, ids in ((chosen, chosen_truncated, chosen_ids),
                                      (rejected, rejected_truncated, rejected_ids))]
    room = answer_room(example_id, len(p), max(len(a) for a in answers), max_length)
    out = {}
    for side, a in zip(("chosen", "rejected"), answers):
        a = a[:room]
        out[side] = {"input_ids": p + a, "loss_mask": [0] * len(p) + [1] * len(a)}
    return out


def encode_pairs(tokenizer: Any, pairs: list, max_length: int) -> list[dict]:
    """PreferencePairs → {example_id, chosen: encoded, rejected: encoded} (see encode_pair),
    plus sampled_ref [chosen, rejected] where the pair carries its sampled tokens and their
    log-probs and both answers are encoded whole: the sampling pass's reference log-probs of
    exactly these tokens (reclaif.train.reference.sampled_reference)."""
    out = []
    for p in pairs:
        e = {"example_id": p.example_id,
             **encode_pair(tokenizer, p.prompt, p.chosen, p.rejected, max_length,
                           p.chosen_truncated, p.rejected_truncated, p.example_id,
                           p.chosen_ids, p.rejected_ids)}
        whole = all(ids and sum(e[side]["loss_mask"]) == len(ids)
                    for side, ids in (("chosen", p.chosen_ids), ("rejected", p.rejected_ids)))
        if whole and p.chosen_logp is not None and p.rejected_logp is not None:
            e["sampled_ref"] = [float(p.chosen_logp), float(p.rejected_logp)]
            e["sampled_by"] = dict(p.sampled_by)
        out.append(e)
    return out


def pad_batch(seqs: list[dict[str, list[int]]], pad_id: int) -> dict[str, Tensor]:
    """Right-pads encoded sequences: input_ids, attention_mask, loss_mask [B, T]."""
    T = max(len(s["input_ids"]) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    loss = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s["input_ids"])
        ids[i, :n] = torch.tensor(s["input_ids"])
        att[i, :n] = 1
        loss[i, :n] = torch.tensor(s["loss_mask"])
    return {"input_ids": ids, "attention_mask": att, "loss_mask": loss}


def split_head(seqs: list[dict[str, list[int]]], head: int, pad_id: int) -> dict[str, Tensor]:
    """Encoded rows that begin with the same `head` tokens (shared_head.common_head) as the head
    once, head_ids [1, head], and each row's remainder right-padded (pad_batch): input_ids,
    attention_mask, loss_mask [B, R], for shared_head.head_sequence_logps."""
    first = seqs[0]["input_ids"][:head]
    if any(s["input_ids"][:head] != first or len(s["input_ids"]) <= head for s in seqs):
        raise ValueError(f"split_head: the rows do not all begin with the same {head} tokens "
                         "and go on after them")
    rest = pad_batch([{k: s[k][head:] for k in ("input_ids", "loss_mask")} for s in seqs],
                     pad_id)
    return {"head_ids": torch.tensor([first]), **rest}


def collate_pairs(items: list[dict], pad_id: int) -> dict[str, Any]:
    """Pairs → chosen and rejected batches, plus reference log-prob sums when present."""
    out: dict[str, Any] = {
        "example_ids": [it["example_id"] for it in items],
        "chosen": pad_batch([it["chosen"] for it in items], pad_id),
        "rejected": pad_batch([it["rejected"] for it in items], pad_id),
    }
    if all("ref_chosen" in it for it in items):
        out["ref_chosen"] = torch.tensor([it["ref_chosen"] for it in items], dtype=torch.float32)
        out["ref_rejected"] = torch.tensor([it["ref_rejected"] for it in items], dtype=torch.float32)
    return out


PROMPT, CHOSEN, REJECTED, PADDING = 0, 1, 2, 3  # segments of a shared-prompt row


def share_prompt(chosen: dict[str, Tensor], rejected: dict[str, Tensor],
                 ignore_index: int = -100) -> dict[str, Tensor]:
    """The padded chosen and rejected batches of collate_pairs as ONE row per pair,
    [prompt | chosen answer | rejected answer], for a forward that runs the prompt once
    (reclaif.train.fused_dpo.pair_hidden). The prompt is the leading tokens outside the loss
    mask, which encode_pair makes the same for both answers (checked here).

    Returns, on the host: input_ids, position_ids (both answers continue from the prompt's
    length, as in their own rows) and segment (PROMPT, CHOSEN, REJECTED, PADDING) [B, L]; and
    for the 2B answer rows (chosen rows, then rejected rows) gather [2B, W], the flat position
    in [B*L] of the hidden state that predicts each counted token, and labels [2B, W], that
    token (ignore_index after the row's last). They are the tokens and predictors that
    shifted_labels counts in the separate rows, moved to the packed row: the last prompt
    position predicts both answers' first tokens."""
    B = chosen["input_ids"].shape[0]
    sides = [(x, shifted_labels(x["input_ids"], x["attention_mask"], x["loss_mask"],
                                ignore_index)) for x in (chosen, rejected)]
    rows: list[tuple[Tensor, Tensor, Tensor]] = []
    answers: tuple[list, list] = ([], [])  # (predictor positions, tokens) per chosen/rejected row
    (c, lc), (r, lr) = sides
    for b in range(B):
        nc, nr = int(c["attention_mask"][b].sum()), int(r["attention_mask"][b].sum())
        # the prompt: leading tokens that carry no loss
        pc, pr = (int((x["loss_mask"][b, :n].cumsum(0) == 0).sum())
                  for x, n in ((c, nc), (r, nr)))
        if pc != pr or not torch.equal(c["input_ids"][b, :pc], r["input_ids"][b, :pr]):
            raise ValueError(f"share_prompt: pair {b}'s chosen and rejected rows start with "
                             f"different prompts ({pc} and {pr} tokens); encode_pair gives "
                             "both the same")
        P = pc
        rows.append((torch.cat([c["input_ids"][b, :nc], r["input_ids"][b, P:nr]]),
                     torch.cat([torch.arange(nc), torch.arange(P, nr)]),
                     torch.tensor([PROMPT] * P + [CHOSEN] * (nc - P) + [REJECTED] * (nr - P))))
        for out, labels, shift in ((answers[0], lc, 0), (answers[1], lr, nc - P)):
            t = (labels[b] != ignore_index).nonzero().squeeze(1)  # rejected sits after chosen
            out.append((torch.where(t < P, t, t + shift), labels[b, t]))
    answer_rows = answers[0] + answers[1]
    L = max(len(ids) for ids, _, _ in rows)
    W = max(1, max(len(t) for t, _ in answer_rows))
    out = {"input_ids": torch.zeros(B, L, dtype=torch.long),
           "position_ids": torch.zeros(B, L, dtype=torch.long),
           "segment": torch.full((B, L), PADDING, dtype=torch.long),
           "gather": torch.zeros(2 * B, W, dtype=torch.long),
           "labels": torch.full((2 * B, W), ignore_index, dtype=torch.long)}
    for b, row in enumerate(rows):
        for key, v in zip(("input_ids", "position_ids", "segment"), row):
            out[key][b, :len(v)] = v
    for i, (t, tokens) in enumerate(answer_rows):
        out["gather"][i, :len(t)] = (i % B) * L + t
        out["labels"][i, :len(t)] = tokens
    return out


def count_tokens(batch: dict[str, Tensor]) -> int:
    return int(batch["attention_mask"].sum())


@dataclass
class BatchPlan:
    """Which examples each rank sees at each micro-batch of each epoch.

    Every rank runs the same number of micro-batches (ZeRO-3 collectives need that), and an
    epoch is a whole number of optimizer steps: the shuffled order is wrapped around to fill
    the last global batch, so a few examples may be seen twice in an epoch.
    """

    num_examples: int
    batch_size: int
    world_size: int = 1
    rank: int = 0
    grad_accum: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_examples < 1:
            raise ValueError("no training examples")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_examples / self.global_batch)

    @property
    def micro_per_epoch(self) -> int:
        return self.steps_per_epoch * self.grad_accum

    def epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.num_examples, generator=g).tolist()
        need = self.steps_per_epoch * self.global_batch
        return [perm[i % len(perm)] for i in range(need)]

    def micro_batches(self, epoch: int, skip: int = 0) -> list[list[int]]:
        """This rank's micro-batches of `epoch`, without the first `skip` (already consumed)."""
        order = self.epoch_order(epoch)
        per_micro = self.batch_size * self.world_size
        out = []
        for m in range(self.micro_per_epoch):
            start = m * per_micro + self.rank * self.batch_size
            out.append(order[start:start + self.batch_size])
        return out[skip:]
