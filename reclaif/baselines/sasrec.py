"""SASRec (Kang & McAuley, ICDM 2018) in plain PyTorch, trained on the training sequences.

Causal self-attention over item embeddings with learned positions, point-wise feed-forward,
layer norm and dropout, as in the paper's reference code. Two losses: the original binary
cross-entropy with one sampled negative per position (`loss="bce"`), and full-softmax
cross-entropy over the catalog (`loss="ce"`, the default: markedly stronger, as later work on
SASRec found). Early stopping on a validation split held out from the training examples by
user. Candidates are scored by the dot product of the last hidden state with their embeddings.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reclaif.atomic import atomic_write_bytes, atomic_write_json
from reclaif.baselines.base import Ranker, history, order_by_scores, targets
from reclaif.errors import DataError, ReclaifError
from reclaif.records import Example, Item

log = logging.getLogger(__name__)
PAD, OOV = 0, 1  # item ids outside the catalog share OOV; PAD is masked everywhere


@dataclass
class SASRecConfig:
    loss: str = "ce"            # "ce" (full softmax) or "bce" (one sampled negative, original)
    max_len: int = 10           # history positions (LLaRA/S-DPO and the paper use 10)
    dim: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    # A budget in epochs, not seconds: a time cap fits a weaker model on a loaded machine, so
    # the same command gave different baselines and evidence (docs/RESULTS.md, the proof runs).
    max_epochs: int = 30
    patience: int = 5           # epochs without validation gain before stopping
    val_fraction: float = 0.1   # users held out of training for early stopping
    max_seconds: float = 0.0    # optional wall-clock cap (0 = none; the best epoch is kept)
    # loss only at the last position by default: sliding-window data (LLaRA rows are every
    # prefix of a user's sequence) already has one row per transition, and the full softmax
    # at all 10 positions costs 10x for transitions seen 10 times over
    all_positions: bool = False
    seed: int = 0
    # where fit() trains: "cpu", "cuda" (a GPU: the GPU proof fits its six evidence models
    # there) or "auto" (cuda where torch sees one); a loaded model scores where it was loaded
    device: str = "cpu"


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim, eps=1e-8)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ln_ffn = nn.LayerNorm(dim, eps=1e-8)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, causal: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # as in the reference code: queries are layer-normed, keys/values are not
        q = self.ln_attn(x)
        a, _ = self.attn(q, x, x, attn_mask=causal, need_weights=False)
        x = self.ln_ffn(q + a)
        return (x + self.ffn(x)) * keep


class SASRecModel(nn.Module):
    def __init__(self, n_tokens: int, cfg: SASRecConfig) -> None:
        super().__init__()
        self.item = nn.Embedding(n_tokens, cfg.dim, padding_idx=PAD)
        self.pos = nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg.dim, cfg.heads, cfg.dropout)
                                    for _ in range(cfg.blocks))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-8)
        self.register_buffer("causal", torch.ones(cfg.max_len, cfg.max_len).triu(1).bool(),
                             persistent=False)
        # the reference implementation's initialisation; N(0, 1) embeddings give CE logits
        # in the hundreds at step 0
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
        with torch.no_grad():
            self.item.weight[PAD].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item indices → (B, L, D) hidden states."""
        keep = (seq != PAD).unsqueeze(-1).float()
        x = self.item(seq) * self.item.embedding_dim ** 0.5
        x = self.drop(x + self.pos.weight[: seq.shape[1]]) * keep
        for block in self.blocks:
            x = block(x, self.causal, keep)
        return self.norm(x)


def split_by_user(train: Sequence[Example], fraction: float, seed: int
                  ) -> tuple[list[Example], list[Example]]:
    """Holds out whole users for early stopping.

    Without user ids, the last contiguous `fraction` of the examples is held out instead:
    loaders write a user's rows together (LLaRA's prefix rows), so at most one user straddles
    the cut, where a random row split would leak each held-out target into the next row's history.
    """
    users = sorted({ex.user for ex in train if ex.user is not None})
    if users and len(users) >= 10 and all(ex.user is not None for ex in train):
        rng = np.random.default_rng(seed)
        held = set(rng.choice(users, max(1, int(round(fraction * len(users)))), replace=False))
        return ([ex for ex in train if ex.user not in held], [ex for ex in train if ex.user in held])
    cut = len(train) - max(1, int(round(fraction * len(train))))
    return list(train[:cut]), list(train[cut:])


@dataclass
class SASRecRanker(Ranker):
    config: SASRecConfig = field(default_factory=SASRecConfig)
    name: str = "sasrec"
    vocab: dict[str, int] = field(default_factory=dict, repr=False)
    model: SASRecModel | None = field(default=None, repr=False)
    history_log: list[dict] = field(default_factory=list, repr=False)
    _scores: dict[tuple, np.ndarray] = field(default_factory=dict, repr=False)

    # -- data ---------------------------------------------------------------------------
    def _index(self, ids: Sequence[str]) -> list[int]:
        return [self.vocab.get(i, OOV) for i in ids]

    def _left_pad(self, rows: list[list[int]]) -> torch.Tensor:
        L = self.config.max_len
        return torch.tensor([[PAD] * (L - len(r[-L:])) + r[-L:] for r in rows], dtype=torch.long)

    def _training_tensors(self, examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-item targets, both (N, L) left-padded; PAD targets carry no loss."""
        inputs, nexts = [], []
        for ex in examples:
            ctx = self._index(history(ex))
            for t in targets(ex)[:1]:
                seq = (ctx + [self.vocab.get(t, OOV)])[-(self.config.max_len + 1):]
                if len(seq) < 2:
                    continue  # a first interaction has nothing to predict it from
                nxt = seq[1:] if self.config.all_positions else [PAD] * (len(seq) - 2) + seq[-1:]
                inputs.append(seq[:-1])
                nexts.append(nxt)
        if not inputs:
            raise ReclaifError("sasrec: no training example has both a history and a target")
        return self._left_pad(inputs), self._left_pad(nexts)

    # -- training -----------------------------------------------------------------------
    def fit(self, train: Sequence[Example], items: dict[str, Item]) -> None:
        cfg = self.config
        if cfg.loss not in ("ce", "bce"):
            raise ReclaifError(f"sasrec: loss must be 'ce' or 'bce', not {cfg.loss!r}")
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        self.vocab = {item_id: n + 2 for n, item_id in enumerate(items)}
        fit_ex, val_ex = split_by_user(train, cfg.val_fraction, cfg.seed)
        device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                              else "cpu" if cfg.device == "auto" else cfg.device)
        x, y = (t.to(device) for t in self._training_tensors(fit_ex))
        n_tokens = len(self.vocab) + 2
        self.model = SASRecModel(n_tokens, cfg).to(device)
        opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.98),
                               weight_decay=cfg.weight_decay)
        best, best_state, bad, start = float("-inf"), None, 0, time.monotonic()
        self.history_log = []
        for epoch in range(1, cfg.max_epochs + 1):
            self.model.train()
            order = torch.from_numpy(rng.permutation(len(x))).to(device)
            total = 0.0
            for s in range(0, len(x), cfg.batch_size):
                idx = order[s: s + cfg.batch_size]
                loss = self._loss(x[idx], y[idx], n_tokens)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            # with nothing held out (tiny training sets), the training loss decides
            score = self.validate(val_ex) if val_ex else -total / len(x)
            self.history_log.append({"epoch": epoch, "loss": total / len(x), "val_mrr": score})
            log.info("sasrec[%s] epoch %d loss %.4f val MRR %.4f", cfg.loss, epoch,
                     total / len(x), score)
            if score > best:
                best, bad = score, 0
                best_state = {k: v.clone() for k, v in self.model.state_dict().items()}
            else:
                bad += 1
            if bad >= cfg.patience or (cfg.max_seconds
                                       and time.monotonic() - start > cfg.max_seconds):
                break
        assert best_state is not None
        self.model.load_state_dict(best_state)
        self.model.eval()
        self._scores = {}

    def _loss(self, x: torch.Tensor, y: torch.Tensor, n_tokens: int) -> torch.Tensor:
        h = self.model(x)                                  # (B, L, D)
        mask = y != PAD
        h, pos = h[mask], y[mask]                          # (P, D), (P,)
        table = self.model.item.weight
        if self.config.loss == "ce":
            logits = h @ table.T
            logits[:, PAD] = float("-inf")
            return nn.functional.cross_entropy(logits, pos)
        # one uniformly sampled negative per position, never the positive itself
        neg = torch.randint(2, n_tokens - 1, pos.shape, device=pos.device)
        neg = torch.where(neg >= pos, neg + 1, neg).clamp(max=n_tokens - 1)
        pos_logit = (h * table[pos]).sum(-1)
        neg_logit = (h * table[neg]).sum(-1)
        bce = nn.functional.binary_cross_entropy_with_logits
        return bce(pos_logit, torch.ones_like(pos_logit)) + bce(neg_logit, torch.zeros_like(neg_logit))

    # -- scoring ------------------------------------------------------------------------
    @torch.no_grad()
    def _last_hidden(self, examples: Sequence[Example]) -> torch.Tensor:
        self.model.eval()
        seqs = self._left_pad([self._index(history(ex)) for ex in examples]).to(self._device())
        return torch.cat([self.model(seqs[s: s + 1024])[:, -1] for s in range(0, len(seqs), 1024)])

    def _candidate_scores(self, examples: Sequence[Example]) -> torch.Tensor:
        """(N, max candidates) dot-product scores; OOV candidates and padding are -inf."""
        h = self._last_hidden(examples)
        width = max(len(ex.candidates) for ex in examples)
        idx = torch.tensor([[self.vocab.get(c, PAD) for c in ex.candidates]
                            + [PAD] * (width - len(ex.candidates)) for ex in examples],
                           device=h.device)
        with torch.no_grad():
            out = (self.model.item.weight[idx] * h.unsqueeze(1)).sum(-1)
        return out.masked_fill(idx == PAD, float("-inf"))

    @torch.no_grad()
    def validate(self, examples: Sequence[Example]) -> float:
        """Mean reciprocal rank of the target among each example's candidates (the whole
        catalog when an example lists only the target); examples without history are skipped."""
        examples = [ex for ex in examples if history(ex) and targets(ex)]
        if not examples:
            return 0.0
        tgt = torch.tensor([self.vocab.get(targets(ex)[0], PAD) for ex in examples],
                           device=self._device())
        if all(len(ex.candidates) > 1 for ex in examples):
            scores = self._candidate_scores(examples)
            t_score = torch.stack([scores[n, ex.candidates.index(targets(ex)[0])]
                                   if targets(ex)[0] in ex.candidates else
                                   torch.tensor(float("-inf"), device=scores.device)
                                   for n, ex in enumerate(examples)])
        else:
            scores = self._last_hidden(examples) @ self.model.item.weight.T
            scores[:, :2] = float("-inf")
            t_score = scores.gather(1, tgt.unsqueeze(1)).squeeze(1)
        rank = (scores > t_score.unsqueeze(1)).sum(1)
        return float((1.0 / (1 + rank.float())).masked_fill(tgt == PAD, 0.0).mean())

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def fit_log(self) -> list[dict]:
        return self.history_log

    def prepare(self, examples: Sequence[Example]) -> None:
        """Scores all examples' candidates in a few batched forward passes (cached by id)."""
        if self.model is None:
            raise ReclaifError("sasrec: call fit(train, items) before rank()")
        todo = [ex for ex in examples if self._key(ex) not in self._scores]
        for s in range(0, len(todo), 1024):
            chunk = todo[s: s + 1024]
            for ex, row in zip(chunk, self._candidate_scores(chunk).cpu().numpy()):
                self._scores[self._key(ex)] = row[: len(ex.candidates)]

    @staticmethod
    def _key(example: Example) -> tuple:
        # the candidates are part of the key: evidence lists an example's candidates reordered
        return example.id, tuple(example.candidates)

    def scores(self, example: Example) -> np.ndarray:
        self.prepare([example])
        return self._scores[self._key(example)]

    def rank(self, example: Example) -> list[str]:
        return order_by_scores(example, self.scores(example), self.config.seed)

    # -- persistence --------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """sasrec.pt (weights) and sasrec.json (config and vocabulary), each written atomically."""
        import io

        if self.model is None:
            raise ReclaifError("sasrec: nothing to save before fit()")
        buf = io.BytesIO()
        torch.save({k: v.cpu() for k, v in self.model.state_dict().items()}, buf)
        atomic_write_bytes(directory / "sasrec.pt", buf.getvalue())
        atomic_write_json(directory / "sasrec.json",
                          {"config": dataclasses.asdict(self.config), "vocab": self.vocab,
                           "name": self.name})

    @classmethod
    def load(cls, directory: Path) -> "SASRecRanker":
        try:
            meta = json.loads((directory / "sasrec.json").read_text(encoding="utf-8"))
            cfg = SASRecConfig(**meta["config"])
            ranker = cls(config=cfg, name=meta.get("name", "sasrec"), vocab=meta["vocab"])
            ranker.model = SASRecModel(len(ranker.vocab) + 2, cfg)
            state = torch.load(directory / "sasrec.pt", map_location="cpu", weights_only=True)
            ranker.model.load_state_dict(state)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise DataError(f"{directory}: not a saved SASRec model ({e})") from None
        ranker.model.eval()
        return ranker
