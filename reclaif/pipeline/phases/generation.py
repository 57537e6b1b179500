"""The phases the sampler pool runs: sampling a DPO iteration's answers (paper §3.2) and scoring
a stage on the evaluation examples."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from reclaif.atomic import atomic_write_json, atomic_write_jsonl
from reclaif.faults import maybe_fail
from reclaif.judge import make_explainability_scorer
from reclaif.metrics.diversity import DiversityScorer
from reclaif.metrics.evaluate import evaluate_rankings
from reclaif.parsing import parse_recommendation
from reclaif.pipeline.phases.context import Run
from reclaif.pipeline.phases.fanout import fan_out, shard_seed
from reclaif.pipeline.report import write_report
from reclaif.records import Example
from reclaif.run_layout import stage_name
from reclaif.train.policy import policy_and_reference


def generate(run: Run, key: str, examples: list[Example], model: str, out_dir: Path,
             n: int, temperature: float, top_p: float, max_new_tokens: int,
             seed_base: tuple, max_total_tokens: int = 0) -> list[dict]:
    """`n` answers of `model` per example, fanned over the sampler pool (out_dir/shards/),
    merged into out_dir/samples.jsonl."""

    def args(i: int) -> tuple:
        params = {"n": n, "temperature": temperature, "top_p": top_p,
                  "max_new_tokens": max_new_tokens, "seed": shard_seed(*seed_base, i),
                  "max_total_tokens": max_total_tokens}
        return (model, params, f"{key}:{i}")

    return fan_out(run.store, key, [e.to_json() for e in examples], out_dir / "shards",
                   out_dir / "samples.jsonl", out_dir / "sample_report.json", run.cfg.ray,
                   lambda: nullcontext(run.samplers.on(model)), "sample", args)


def sampling_prompts(run: Run, i: int) -> list[Example]:
    """Iteration i's prompts: all training prompts, or the i-th slice of max_prompts. With
    sft.max_examples below the training prompts, the slices start after SFT's, so every
    iteration samples prompts neither SFT nor an earlier iteration saw (until they wrap)."""
    n, total = run.cfg.sampling.max_prompts, len(run.train)
    if not n or n >= total:
        return run.train
    sft = run.cfg.sft
    offset = sft.max_examples if 0 < sft.max_examples < total else 0
    start = (offset + (i - 1) * n) % total
    return [run.train[(start + j) % total] for j in range(n)]


def sample(run: Run, i: int) -> None:
    """sampling.num_samples answers per prompt from the model DPO iteration i starts from."""
    key = f"{stage_name(i)}/sample"
    with run.store.phase(key) as phase:
        if phase.done:
            return
        s = run.cfg.sampling
        out_dir = run.store.iter_dir(i)
        policy, _ = policy_and_reference(run.cfg, run.store.root, i)
        rows = generate(run, key, sampling_prompts(run, i), policy, out_dir, s.num_samples,
                        s.temperature, s.top_p, s.max_new_tokens, (run.cfg.seed, "sample", i),
                        max_total_tokens=run.cfg.dpo.max_length)
        maybe_fail("sample:end")
        phase.finish([out_dir / "samples.jsonl"], count=len(rows))


def base_examples(run: Run) -> list[Example]:
    """The evaluation examples the base model is scored on: the first eval.base_examples
    (-1: all, 0: none). The base model is rarely valid on these prompts, so a full
    evaluation of it would cost as much as a trained stage's to say little more."""
    n = run.cfg.eval.base_examples
    return list(run.evaluation) if n < 0 else run.evaluation[:n]


def evaluate(run: Run, stage: str, model: str, examples: list[Example] | None = None) -> None:
    """Scores `model` on `examples` (default: every evaluation example), then rewrites the
    report."""
    key = f"{stage}/eval"
    with run.store.phase(key) as phase:
        if phase.done:
            return
        e = run.cfg.eval
        examples = run.evaluation if examples is None else examples
        out_dir = run.store.phase_dir(stage)
        rows = generate(run, key, examples, model, out_dir / "eval", 1, e.temperature, 1.0,
                        e.max_new_tokens, (run.cfg.seed, "eval"))
        by_id = {x.id: x for x in examples}
        recs = {}
        for row in rows:
            if row.get("failed"):
                continue
            recs[row["example_id"]] = parse_recommendation(
                row["answers"][0], by_id[row["example_id"]], run.items, run.top_k)
        scorer = make_explainability_scorer(run.cfg.explainability, run.items, run.top_k)
        expl = {i: scorer.score(by_id[i], r.raw_text) for i, r in recs.items() if r.valid}
        result = evaluate_rankings(examples, {i: r.items for i, r in recs.items()},
                                   {i: r.valid for i, r in recs.items()}, run.items, e.k,
                                   None if e.diversity_model == "none" else
                                   DiversityScorer(run.items, e.diversity_model), expl)
        result.update(stage=stage, model=model, split=run.cfg.data.eval_split,
                      held_out=run.held_out.note(),
                      failed=sum(1 for r in rows if r.get("failed")))
        atomic_write_jsonl(out_dir / "predictions.jsonl",
                           [{"id": i, **r.to_json()} for i, r in recs.items()])
        atomic_write_json(out_dir / "eval.json", result)
        maybe_fail(f"eval:{stage}")
        phase.finish([out_dir / "eval.json"])
    write_report(run.store.root)
