"""`reclaif compare`: two runs evaluated on the same examples, stage by stage, as paired
differences (e.g. S-DPO against pairwise DPO from one SFT checkpoint, issue 32; hybrid against
names-only). A run's stages are its */eval.json (pipeline.report.stages)."""
from __future__ import annotations

from pathlib import Path

from reclaif.errors import ReclaifError
from reclaif.metrics.paired import PairedDiff, paired_differences
from reclaif.pipeline.report import BOOTSTRAP, stages


def compare_runs(run_a: str | Path, run_b: str | Path, stage_names: list[str] | None = None,
                 resamples: int = BOOTSTRAP) -> list[tuple[str, list[PairedDiff]]]:
    """(stage, a − b per metric) for each named stage (default: every stage both runs
    evaluated, in pipeline order). Refuses a stage a run lacks and runs that share no scored
    example (different evaluation sets cannot be paired)."""
    found = {}
    for run in (run_a, run_b):
        found[run] = dict(stages(Path(run)))
        if not found[run]:
            raise ReclaifError(f"{run}: no evaluated stage (no eval.json of the base model, "
                               f"SFT or an iteration): is it a run directory?")
    a, b = found[run_a], found[run_b]
    names = stage_names or [s for s in a if s in b]
    for s in names:
        for run, got in ((run_a, a), (run_b, b)):
            if s not in got:
                raise ReclaifError(f"{run}: stage {s!r} was not evaluated (has: "
                                   f"{', '.join(got) or 'none'})")
    if not names:
        raise ReclaifError(f"{run_a} and {run_b} evaluated no stage in common "
                           f"({', '.join(a)} / {', '.join(b)})")
    out = [(s, paired_differences(a[s], b[s], resamples=resamples)) for s in names]
    if not any(diffs for _, diffs in out):
        raise ReclaifError(f"{run_a} and {run_b} share no scored example: they were evaluated "
                           f"on different examples and cannot be paired")
    return out


def format_comparison(result: list[tuple[str, list[PairedDiff]]], label_a: str,
                      label_b: str) -> str:
    """One markdown table per stage: each metric's two means and a − b with its interval."""
    lines = []
    for stage, diffs in result:
        lines += [f"## {stage}", "",
                  f"| Metric | {label_a} | {label_b} | difference [95% paired] | examples |",
                  "|---|---|---|---|---|"]
        lines += [f"| {d.metric} | {d.a:.3f} | {d.b:.3f} | {d.diff:+.3f} [{d.lo:+.3f}, "
                  f"{d.hi:+.3f}] | {d.n} |" for d in diffs]
        lines.append("")
    return "\n".join(lines)
