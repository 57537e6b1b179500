"""The AI-feedback phases of a DPO iteration (paper §3.2): the judge pool's verdicts on the
sampled answers, then the preference pairs (or, with more than two answers per prompt, the
ranked answer groups) DPO trains on."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from reclaif.atomic import atomic_write_json, atomic_write_jsonl, read_jsonl
from reclaif.config_load import to_dict
from reclaif.distributed.pool import ActorPool, LocalPool, make_pool
from reclaif.distributed.workers import JudgeWorker
from reclaif.errors import ReclaifError
from reclaif.judge import preference_pair
from reclaif.judge.audit import audit
from reclaif.pipeline.answer_groups import endpoint_counts, write_groups
from reclaif.pipeline.phases.context import Run
from reclaif.pipeline.phases.fanout import fan_out
from reclaif.records import PreferencePair, Verdict
from reclaif.run_layout import stage_name


@contextmanager
def judge_pool(run: Run) -> Iterator[ActorPool | LocalPool]:
    """ray.num_judges judge actors, shut down when the phase is over."""
    r = run.cfg.ray
    pool = make_pool(r, JudgeWorker, (to_dict(run.cfg.judge), str(run.data_path), run.top_k),
                     num_actors=r.num_judges, num_cpus=1)
    try:
        yield pool
    finally:
        pool.shutdown()


def judge(run: Run, i: int) -> None:
    """The judge's verdict on each prompt's sampled answers (iter-NNN/verdicts.jsonl)."""
    key = f"{stage_name(i)}/judge"
    with run.store.phase(key) as phase:
        if phase.done:
            return
        out_dir = run.store.iter_dir(i)
        by_id = {e.id: e for e in run.train}
        samples = read_jsonl(out_dir / "samples.jsonl")
        rows = [{**s, "example": by_id[s["example_id"]].to_json()} if not s.get("failed") else s
                for s in samples]
        # Give the judge the CPUs/GPUs the samplers held (on a small cluster the judge
        # actors could otherwise wait forever); samplers are recreated next iteration.
        run.samplers.release()
        verdicts = fan_out(run.store, key, rows, out_dir / "verdict_shards",
                           out_dir / "verdicts.jsonl", out_dir / "judge_report.json",
                           run.cfg.ray, lambda: judge_pool(run), "judge_rows",
                           lambda j: (f"judge:{j}",))
        phase.finish([out_dir / "verdicts.jsonl"], count=len(verdicts))


def pairs(run: Run, i: int) -> None:
    """The preference pairs of iteration i (pairs.jsonl, with judge_stats.json); with more
    than two answers per prompt, the ranked answer groups (groups.jsonl) and their pairs. An
    iteration the judge kept nothing of is recorded, then refused: DPO has nothing to train on."""
    key = f"{stage_name(i)}/pairs"
    store = run.store
    with store.phase(key, timed=False) as phase:
        if phase.done:
            return
        out_dir = store.iter_dir(i)
        rows = read_jsonl(out_dir / "verdicts.jsonl")
        by_id = {e.id: e for e in run.train}
        if run.cfg.sampling.num_samples > 2:  # ranked groups: groups.jsonl and their pairs
            kept, stats = write_groups(rows, by_id, run.items, run.top_k, store.groups(i),
                                       store.pairs(i), out_dir / "judge_stats.json")
            phase.finish([store.groups(i), store.pairs(i)], count=len(kept))
            out, what = store.groups(i), "answer group"
        else:
            kept, stats = _pairs(run, rows, by_id)
            out, what = store.pairs(i), "preference pair"
            atomic_write_jsonl(out, [p.to_json() for p in kept])
            atomic_write_json(out_dir / "judge_stats.json", stats)
            phase.finish([out], count=len(kept))
    if not kept:
        raise ReclaifError(f"{out}: the judge kept no {what} in iteration {i} "
                           f"({stats['failed']} of {len(rows)} records failed, "
                           f"{stats['unparseable']} unparseable; see "
                           f"{out_dir / 'judge_stats.json'}); DPO has nothing to train on")


def _pairs(run: Run, rows: list[dict], by_id: dict) -> tuple[list[PreferencePair], dict]:
    """The pairs the verdicts give, and the judge's statistics with what was dropped."""
    kept: list[PreferencePair] = []
    capped_over_finished = 0
    for row in rows:
        if row.get("failed"):
            continue
        pair = preference_pair(by_id[row["example_id"]], row["prompt"], row["a"], row["b"],
                               Verdict.from_json(row["verdict"]))
        if pair is not None:
            pair = pair.with_samples(row)
            # A capped answer never beats a finished one (docs/ARCHITECTURE.md, "Capped
            # answers"): DPO would learn to run on past the stop it pushes down.
            if pair.capped_over_finished:
                capped_over_finished += 1
                continue
            kept.append(pair)
    stats = audit([r for r in rows if not r.get("failed")], by_id, run.items, run.top_k)
    stats.update(pairs_kept=len(kept), dropped_capped_over_finished=capped_over_finished,
                 capped_rejected=sum(p.rejected_truncated for p in kept), **endpoint_counts(rows))
    return kept, stats
