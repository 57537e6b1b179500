"""S-DPO's part of the DPO recipe (dpo.loss_type: sdpo; reclaif.train.dpo runs it): the groups
it trains on and its loss in the shared loop.

Groups come from RUN/iter-NNN/groups.jsonl (sampling.num_samples > 2: the judge's top answer
and every answer it beat), or at two answers per prompt from pairs.jsonl, each pair a group of
two, on which S-DPO's loss is the sigmoid DPO loss. Each group runs as one row [prompt | chosen |
rejected...] (reclaif.train.groups.fused_sdpo_loss) against the reference sums that
reclaif.train.reference stores per answer.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reclaif.atomic import read_jsonl
from reclaif.config import DPOConfig, RunConfig
from reclaif.records import AnswerGroup, PreferencePair
from reclaif.run_layout import RunLayout
from reclaif.train.data import count_tokens
from reclaif.train.groups import collate_groups, fused_sdpo_loss
from reclaif.train.losses import METRICS
from reclaif.train.session import hf_model
from reclaif.train.strategy import Strategy


def load_groups(cfg: RunConfig, run_dir: Path, iteration: int) -> tuple[Path, list[AnswerGroup]]:
    """The iteration's groups and the file they came from: groups.jsonl where the judge ranked
    more than two answers per prompt, else pairs.jsonl read as groups of two."""
    layout = RunLayout(run_dir)
    if cfg.sampling.num_samples > 2:
        path = layout.groups(iteration)
        return path, [AnswerGroup.from_json(r) for r in read_jsonl(path)]
    path = layout.pairs(iteration)
    return path, [AnswerGroup.from_pair(PreferencePair.from_json(r)) for r in read_jsonl(path)]


@dataclass
class SDPOMethod:
    """S-DPO's part of the shared loop: the packed group loss against the stored reference
    sums (attach_group_reference_logps' `ref`), and DPO's metrics over the groups."""

    strategy: Strategy
    cfg: DPOConfig
    encoded: list[dict]
    pad_id: int
    _metrics: Any = None
    _tokens: int = 0

    def begin_step(self, window: Sequence[Sequence[int]]) -> None:
        pass

    def _step(self, model: torch.nn.Module, batch: dict, ref: torch.Tensor
              ) -> tuple[torch.Tensor, dict]:
        t = self.cfg
        return fused_sdpo_loss(hf_model(model), batch, ref, t.beta, t.logprob_chunk,
                               kernel=t.logprob_kernel, weight_grad_acc=t.logprob_weight_grad,
                               device=self.strategy.device, rpo_alpha=t.rpo_alpha)

    def loss(self, idx: Sequence[int]) -> torch.Tensor:
        items = [self.encoded[i] for i in idx]
        batch = collate_groups([it["answers"] for it in items], self.pad_id)
        ref = torch.tensor([x for it in items for x in it["ref"]], dtype=torch.float32)
        with self.strategy.autocast():
            loss, self._metrics = self.strategy.forward(self._step, batch, ref)
        # the tokens a pair's rows would count: every answer row with its prompt
        self._tokens = count_tokens(batch["answers"])
        return loss

    def scalars(self) -> dict[str, float]:
        values = torch.stack([self._metrics[k] for k in METRICS]).tolist()  # one sync
        return {**{k: v / self.cfg.grad_accum for k, v in zip(METRICS, values)},
                "tokens": self._tokens}
