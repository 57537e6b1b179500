"""Out-of-fold evidence: no prompt's evidence comes from a model that saw its user.

The training prompts (SFT, sampling, DPO) get their evidence from K models, each fitted without
one K-th of the users (fold = a hash of the user), the prompt's own fold's model answering: the
recommender learns how far to trust SASRec on users SASRec never saw, which is the situation at
evaluation. The evaluation prompts get theirs from one model fitted on every training window.
`check_no_leak` proves both from what each saved model records it was fitted on.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reclaif.atomic import atomic_write_jsonl, read_jsonl
from reclaif.config import EvidenceConfig, RunConfig
from reclaif.data.heldout import LEAVE_LAST_OUT_DOMAINS
from reclaif.errors import DataError
from reclaif.evidence import cache
from reclaif.evidence.cache import fit_key, items_digest
from reclaif.evidence.models import LEARNED_SOURCES, EvidenceModels, resolve_sources
from reclaif.records import Example, Item
from reclaif.run_config import load_run_config

log = logging.getLogger(__name__)
FULL = "full"


def unit(example: Example) -> str:
    """What folds split by: the user, or the example itself where no user is named."""
    return example.user or example.id


def fold_of(key: str, folds: int) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % folds


def check_no_leak(fitted_users: dict[str, set[str]], train: Sequence[Example],
                  evaluation: Sequence[Example], folds: int) -> None:
    """fitted_users: model name ('fold-N' or 'full') → the units it was fitted on. A fold model
    fitted on a unit whose training prompt it annotates, or the evaluation model fitted on an
    evaluation user (outside leave-last-out domains), is a DataError."""
    for f in range(folds):
        users = fitted_users.get(f"fold-{f}")
        if users is None:
            continue
        seen = sorted({unit(p) for p in train if fold_of(unit(p), folds) == f} & users)
        if seen:
            raise DataError(f"evidence leak: fold {f}'s model was fitted on {len(seen)} user(s) "
                            f"whose training prompts it annotates (e.g. {seen[0]!r})")
    users = fitted_users.get(FULL, set())
    leaked = sorted({ex.user for ex in evaluation if ex.user is not None
                     and ex.domain not in LEAVE_LAST_OUT_DOMAINS} & users)
    if leaked:
        raise DataError(f"evidence leak: the evaluation model was fitted on {len(leaked)} "
                        f"evaluation user(s) (e.g. {leaked[0]!r}); fit it on the training "
                        "split only")


@dataclass
class EvidenceSet:
    """The evidence of one run: annotated training and evaluation examples, and its files."""

    train: list[Example]
    evaluation: list[Example]
    files: list[Path] = field(default_factory=list)
    description: str = ""


@dataclass
class _Reuse:
    """Where fitted models are reused from (evidence/cache.py), and the catalog's hash."""

    root: Path
    items_hash: str


def _fit_or_load(directory: Path, windows: Sequence[Example], items: dict[str, Item],
                 sources: list[str], cfg: EvidenceConfig, seed: int,
                 reuse: _Reuse | None = None) -> EvidenceModels:
    if (directory / "fit.json").is_file():  # resumed: this fold finished before the crash
        return EvidenceModels.load(directory, items, seed)
    key = fit_key(windows, reuse.items_hash, sources, cfg, seed) if reuse else ""
    if reuse and cache.fetch(reuse.root, key, directory):
        try:
            return EvidenceModels.load(directory, items, seed)
        except Exception as e:  # noqa: BLE001 - whatever a bad entry raises, it is refitted
            cache.drop(reuse.root, key, f"did not load ({type(e).__name__}: {e})")
            (directory / "fit.json").unlink(missing_ok=True)
    log.info("evidence: fitting %s on %d windows", directory.name, len(windows))
    m = EvidenceModels.fit(windows, items, sources, cfg.order, cfg.sasrec_epochs,
                           cfg.sasrec_max_seconds, seed, cfg.device)
    m.save(directory)
    if reuse:
        cache.publish(reuse.root, key, m.files(directory))
    return m


def _annotate(models: EvidenceModels, examples: Sequence[Example],
              items: dict[str, Item]) -> list[Example]:
    models.prepare(examples)
    return [models.annotate(ex, items) for ex in examples]


def build_evidence(cfg: EvidenceConfig, train: list[Example], evaluation: list[Example],
                   windows: list[Example], items: dict[str, Item], out_dir: Path,
                   seed: int = 0, cache_root: Path | None = None) -> EvidenceSet:
    """Fits (or, resumed, loads) the fold models and the evaluation model under `out_dir`,
    checks them for leaks, annotates both splits and writes train.jsonl and eval.jsonl.
    cache_root: where models fitted on the same inputs are reused from and published to
    (evidence/cache.py, `cache.cache_dir(cfg)`); None fits every model here."""
    task = (train or evaluation)[0].task
    reuse = _Reuse(cache_root, items_digest(items)) if cache_root is not None else None
    sources = resolve_sources(cfg.sources, task)
    learned = any(s in LEARNED_SOURCES for s in sources)
    if learned and not windows:
        raise DataError("evidence: no training interactions to fit SASRec or the transition "
                        "model on (an interactions.jsonl or sequential training examples)")
    fitted: dict[str, set[str]] = {}
    files: list[Path] = []
    full = _fit_or_load(out_dir / FULL, windows, items, sources, cfg, seed, reuse)
    fitted[FULL] = set(full.users)
    files += full.files(out_dir / FULL)
    if learned:
        annotated: dict[str, Example] = {}
        for f in range(cfg.folds):
            d = out_dir / f"fold-{f}"
            mine = [p for p in train if fold_of(unit(p), cfg.folds) == f]
            rest = [w for w in windows if fold_of(unit(w), cfg.folds) != f]
            m = _fit_or_load(d, rest, items, sources, cfg, seed, reuse)
            fitted[f"fold-{f}"] = set(m.users)
            files += m.files(d)
            annotated.update((ex.id, ex) for ex in _annotate(m, mine, items))
        train_out = [annotated[ex.id] for ex in train]
    else:  # BM25 reads no interactions: nothing to hold out
        train_out = _annotate(full, train, items)
    check_no_leak(fitted, train, evaluation, cfg.folds)
    eval_out = _annotate(full, evaluation, items)
    for name, rows in (("train", train_out), ("eval", eval_out)):
        path = out_dir / f"{name}.jsonl"
        atomic_write_jsonl(path, [{"id": ex.id, "candidates": ex.candidates,
                                   "evidence": ex.evidence} for ex in rows])
        files.append(path)
    return EvidenceSet(train_out, eval_out, files, full.describe())


def apply_saved(examples: list[Example], path: Path) -> list[Example]:
    """Examples with the candidates and evidence a finished evidence phase wrote for them."""
    import dataclasses

    rows = {str(r["id"]): r for r in read_jsonl(path)}
    out = []
    for ex in examples:
        r = rows.get(ex.id)
        if r is None or sorted(r["candidates"]) != sorted(ex.candidates):
            raise DataError(f"{path}: no evidence row for example {ex.id!r} (or other "
                            "candidates); the data changed since the evidence phase ran")
        out.append(dataclasses.replace(ex, candidates=list(r["candidates"]),
                                       evidence=dict(r["evidence"])))
    return out


def load_evaluation_models(run_root: Path, items: dict[str, Item]) -> EvidenceModels:
    """The evaluation model of a finished run, for new examples (`reclaif eval`, `recommend`)."""
    return EvidenceModels.load(run_root / "evidence" / FULL, items)


def run_of_checkpoint(path: str | Path) -> Path | None:
    """The run directory a checkpoint lies in (RUN/STAGE/checkpoint or RUN/STAGE), or None."""
    p = Path(path)
    for root in (p.parent.parent, p.parent):
        if (root / "config.yaml").is_file() and (root / "manifest.json").is_file():
            return root
    return None


def evidence_of_checkpoint(path: str | Path, items: dict[str, Item]) -> EvidenceModels | None:
    """The evaluation evidence model a checkpoint was trained to read: that of its run (read
    with the run's frozen config); None for names-only runs and models outside a run."""
    root = run_of_checkpoint(path)
    return None if root is None else evidence_of_run(root, load_run_config(root), items)


def evidence_of_run(root: Path, cfg: RunConfig, items: dict[str, Item]
                    ) -> EvidenceModels | None:
    """The evaluation evidence model of the run at `root` whose config is `cfg`; None for a
    names-only run."""
    if cfg.evidence.mode != "hybrid":
        return None
    if not (root / "evidence" / FULL / "fit.json").is_file():
        raise DataError(f"{root}: a hybrid run without its evidence models "
                        f"({root / 'evidence' / FULL}); rerun `reclaif run` on it to fit them")
    return load_evaluation_models(root, items)
