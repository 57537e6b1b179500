"""DPO recipe (paper Eq. 2; IPO, hinge and cDPO by config; S-DPO) for one iteration of RecLAIF.

Reads RUN/iter-NNN/pairs.jsonl (PreferencePair rows; with dpo.loss_type sdpo, the answer
groups of reclaif.train.sdpo.load_groups) and ref_logps.jsonl, computing the latter first when it
is absent (the reference is the SFT model or the previous iteration's, by `dpo.reference`); the
policy starts from the previous checkpoint. The DPO loss is fused into the log-prob kernel
(S-DPO's runs each group as one packed row, reclaif.train.groups). Writes iter-NNN/checkpoint/,
iter-NNN/train_metrics.json (loss, reward accuracy and margins, tokens/s, steps), curves under
RUN/tb/iter-NNN, and train_state/step-N.
"""
from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reclaif.atomic import read_jsonl
from reclaif.config import DPOConfig, RunConfig, shares_prompt
from reclaif.errors import ConfigError, DataError
from reclaif.faults import maybe_fail
from reclaif.llm.models import load_tokenizer, resolve_model
from reclaif.records import PreferencePair
from reclaif.run_layout import SFT, RunLayout, stage_name
from reclaif.train.data import BatchPlan, collate_pairs, count_tokens, encode_pairs
from reclaif.train.fused_dpo import fused_dpo_loss
from reclaif.train.groups import encode_groups
from reclaif.train.loop import StageFiles, finish, finished, total_steps, train_loop
from reclaif.train.losses import METRICS
from reclaif.train.reference import (attach_group_reference_logps, attach_reference_logps,
                                     compute_group_reference_logps, compute_reference_logps,
                                     sampled_group_reference, sampled_reference, stale_reason,
                                     write_reference_logps)
from reclaif.train.sdpo import SDPOMethod, load_groups
from reclaif.train.session import TrainLog, epoch_means, hf_model, load_policy, mean_over
from reclaif.train.strategy import Strategy

log = logging.getLogger(__name__)


def policy_and_reference(cfg: RunConfig, run_dir: Path, iteration: int) -> tuple[str, str]:
    """Where the policy starts and which model is the reference for this iteration."""
    layout = RunLayout(run_dir)
    first = (str(layout.checkpoint(SFT)) if cfg.sft.enabled else
             resolve_model(cfg.recommender.model, cfg.recommender.cache_dir or None))
    previous = str(layout.checkpoint(stage_name(iteration - 1))) if iteration > 1 else first
    reference = first if cfg.dpo.reference == "sft" else previous
    return previous, reference


def attention_of(model: torch.nn.Module) -> str:
    """The attention implementation a loaded model runs (its config's "auto" resolved)."""
    return hf_model(model).config._attn_implementation


@dataclass
class DPOMethod:
    """DPO's part of the shared loop: the fused loss against the stored reference log-probs,
    and the reward metrics (each averaged over the step's micro-batches)."""

    strategy: Strategy
    cfg: DPOConfig
    encoded: list[dict]
    pad_id: int
    shared_prompt: bool
    _metrics: Any = None
    _tokens: int = 0

    def begin_step(self, window: Sequence[Sequence[int]]) -> None:
        pass

    def _step(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        t = self.cfg
        return fused_dpo_loss(hf_model(model), batch["chosen"], batch["rejected"],
                              batch["ref_chosen"], batch["ref_rejected"], t.beta, t.loss_type,
                              t.label_smoothing, t.logprob_chunk, kernel=t.logprob_kernel,
                              weight_grad_acc=t.logprob_weight_grad, device=self.strategy.device,
                              shared_prompt=self.shared_prompt, rpo_alpha=t.rpo_alpha)

    def loss(self, idx: Sequence[int]) -> torch.Tensor:
        # Left on the host: fused_dpo_loss copies it over without a device sync.
        batch = collate_pairs([self.encoded[i] for i in idx], self.pad_id)
        with self.strategy.autocast():
            loss, self._metrics = self.strategy.forward(self._step, batch)
        self._tokens = count_tokens(batch["chosen"]) + count_tokens(batch["rejected"])
        return loss

    def scalars(self) -> dict[str, float]:
        values = torch.stack([self._metrics[k] for k in METRICS]).tolist()  # one sync
        return {**{k: v / self.cfg.grad_accum for k, v in zip(METRICS, values)},
                "tokens": self._tokens}


def reference_logps(strategy: Strategy, t: DPOConfig, ref_file: Path, policy_path: str,
                    ref_path: str, encoded: list[dict], pad_id: int, attn: str,
                    shared: bool) -> int:
    """Writes the reference log-probs of every pair (or S-DPO group), once per iteration,
    before any policy update (the prepared policy is the reference when both start from the
    same model). Records whose answers the reference model sampled, in this dtype, take the
    sampling pass's sums (sampled_reference); only the rest run a reference forward. Returns
    how many came from sampling."""
    dtype = reference_dtype(t)
    groups = t.loss_type == "sdpo"
    sampled = (sampled_group_reference if groups else sampled_reference)(encoded, ref_path,
                                                                         dtype)
    rest = [i for i in range(len(encoded)) if i not in sampled]
    log.info("reference log-probs: %d of %d %s from the sampling pass (%s, %s), %d by a "
             "reference forward", len(sampled), len(encoded), "groups" if groups else "pairs",
             ref_path, dtype, len(rest))
    computed: list[dict] | None = []
    if rest:
        if ref_path == policy_path:
            strategy.train(False)
            forward = strategy.forward
        else:
            forward = strategy.eval_forward(load_policy(ref_path, t.__class__(
                **{**t.__dict__, "lora_r": 0, "gradient_checkpointing": False}), strategy, attn))
        # Under the policy forward's own autocast: in bf16 the first step then has loss log 2
        # and zero margins, as in fp32 (an fp32 reference would be off by the bf16 rounding).
        with strategy.autocast():
            run = lambda fn, *a: forward(lambda m, *b: fn(hf_model(m), *b), *a)  # noqa: E731
            todo = [encoded[i] for i in rest]
            if groups:
                computed = compute_group_reference_logps(
                    run, todo, pad_id, t.batch_size, t.logprob_chunk, strategy.rank,
                    strategy.world_size, strategy.device, kernel=t.logprob_kernel)
            else:
                computed = compute_reference_logps(
                    run, todo, pad_id, t.batch_size, t.logprob_chunk, strategy.rank,
                    strategy.world_size, strategy.device, kernel=t.logprob_kernel,
                    shared_prompt=shared)
        del forward
        gc.collect()
    if strategy.is_main:
        rows = dict(sampled)
        rows.update(zip(rest, computed or []))
        write_reference_logps(ref_file, [rows[i] for i in range(len(encoded))], dtype, ref_path)
        maybe_fail("dpo:reference")  # crash tests: SIGKILL after the reference is stored
    strategy.barrier()
    return len(sampled)


def reference_dtype(t: DPOConfig) -> str:
    """The dtype the reference pass computes in: the policy forward's (bf16 autocast or
    DeepSpeed bf16 weights with dpo.bf16, else fp32)."""
    return "bfloat16" if t.bf16 else "float32"


def run_dpo(cfg: RunConfig, run_dir: str | Path, iteration: int) -> dict:
    t = cfg.dpo
    run_dir = Path(run_dir)
    if iteration < 1:
        raise DataError(f"dpo: iteration must be >= 1, got {iteration}")
    layout, stage = RunLayout(run_dir), stage_name(iteration)
    files = StageFiles.of(run_dir, stage)
    done = finished(files)
    if done is not None:
        log.info("DPO iteration %d already finished: %s", iteration, files.checkpoint)
        return done

    # 1. engine, tokenizer and pairs
    strategy = Strategy(t).setup()
    policy_path, ref_path = policy_and_reference(cfg, run_dir, iteration)
    tokenizer = load_tokenizer(policy_path)
    groups = t.loss_type == "sdpo"
    if groups:
        source, records = load_groups(cfg, run_dir, iteration)
        encoded = encode_groups(tokenizer, records, t.max_length)
    else:
        source = layout.pairs(iteration)
        records = [PreferencePair.from_json(r) for r in read_jsonl(source)]
        encoded = encode_pairs(tokenizer, records, t.max_length)
    if not encoded:
        raise DataError(f"{source}: no preference {'groups' if groups else 'pairs'} to train on")
    plan = BatchPlan(len(encoded), t.batch_size, strategy.world_size, strategy.rank,
                     t.grad_accum, t.seed)
    total = total_steps(plan, t)
    attn = cfg.recommender.attn_implementation
    policy = load_policy(policy_path, t, strategy, attn)
    shared = shares_prompt(t.prompt_forward, attention_of(policy))
    if groups and not shared:  # "auto" attention resolved to flash-attention 2
        raise ConfigError(f"dpo.loss_type sdpo packs each group under a 4D attention mask; "
                          f"the policy runs {attention_of(policy)} attention, which takes "
                          "none: set recommender.attn_implementation to sdpa or eager")
    strategy.prepare(policy, total)
    del policy

    # 2. reference log-probs, once per iteration (before any policy update or resume)
    ref_file = layout.ref_logps(iteration)
    stale = ref_file.exists() and stale_reason(ref_file, reference_dtype(t), ref_path)
    if stale:
        log.warning("%s: recomputing the reference log-probs: %s", ref_file, stale)
    if stale or not ref_file.exists():
        reference_logps(strategy, t, ref_file, policy_path, ref_path, encoded,
                        tokenizer.pad_token_id, attn, shared)
    from_sampling = (attach_group_reference_logps if groups else attach_reference_logps)(
        ref_file, encoded)

    # 3. the shared loop (resumes a run that was cut)
    tlog = TrainLog(run_dir, stage, strategy.is_main, cfg.report.trackers, cfg.name)
    method = (SDPOMethod(strategy, t, encoded, tokenizer.pad_token_id) if groups else
              DPOMethod(strategy, t, encoded, tokenizer.pad_token_id, shared))
    result = train_loop(strategy, plan, method, t, files, tlog, "dpo")

    # 4. the model checkpoint and the metrics
    h = tlog.history
    last_epoch = [s for s in h if s["epoch"] == (h[-1]["epoch"] if h else 0)]
    metrics = {"phase": "dpo", "iteration": iteration, "steps": result.steps,
               "total_steps": total, "policy_init": policy_path,
               # a group of n answers holds n - 1 pairs (one each at two answers per prompt)
               "pairs": sum(len(e["answers"]) - 1 for e in encoded) if groups else len(encoded),
               **({"groups": len(encoded)} if groups else {}),
               "reference": ref_path, "reference_dtype": reference_dtype(t),
               "reference_from_sampling": from_sampling,
               "loss_type": t.loss_type, "beta": t.beta,
               "rpo_alpha": t.rpo_alpha,
               **{k: mean_over(last_epoch, k) for k in METRICS},
               "loss_first_step": h[0]["loss"] if h else None,
               "margins_first_step": h[0]["rewards/margins"] if h else None,
               "bf16": t.bf16, "epoch_losses": epoch_means(h, t.epochs),
               "tokens_per_s": tlog.tokens_per_s(), "world_size": strategy.world_size,
               "engine": t.engine, "lora_r": t.lora_r,
               "prompt_forward": "shared" if shared else "separate",
               "preempted": result.preempted}
    return finish(strategy, tlog, files, tokenizer, metrics, result.preempted)
