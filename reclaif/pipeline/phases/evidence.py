"""The evidence phase (hybrid mode, reclaif.evidence): what collaborative models say of each
candidate, written into every training and evaluation prompt, and the baseline rows the report
shows beside the LLM's."""
from __future__ import annotations

from reclaif.atomic import atomic_write_json
from reclaif.comparison.baseline_rows import evidence_baselines
from reclaif.evidence import apply_saved, build_evidence, evidence_cache, load_evaluation_models
from reclaif.faults import maybe_fail
from reclaif.pipeline.phases.context import Run


def evidence(run: Run) -> None:
    """Hybrid mode: fit the evidence models (out of fold for the training prompts) and give
    every training and evaluation example its evidence; resumed, read what was written."""
    cfg = run.cfg
    if cfg.evidence.mode == "none":
        return
    out = run.store.evidence_dir()
    with run.store.phase("evidence") as phase:
        if phase.done:
            run.train = apply_saved(run.train, out / "train.jsonl")
            run.evaluation = apply_saved(run.evaluation, out / "eval.jsonl")
            return
        ev = build_evidence(cfg.evidence, run.train, run.evaluation, run.windows, run.items,
                            out, seed=cfg.seed, cache_root=evidence_cache(cfg.evidence))
        run.train, run.evaluation = ev.train, ev.evaluation
        models = load_evaluation_models(run.store.root, run.items)
        baselines = evidence_baselines(cfg, models, run.evaluation, run.windows or run.train,
                                       run.items)
        atomic_write_json(out / "baselines.json", baselines)
        maybe_fail("evidence:end")
        phase.finish(ev.files + [out / "baselines.json"], description=ev.description,
                     windows=len(run.windows), folds=cfg.evidence.folds)
