"""The driver (`reclaif run`): SFT from teacher responses, then DPO iterations, end to end.

Read it top to bottom like a recipe (Algorithm 1 of the paper):

    base eval → teacher data → SFT → SFT eval →
    for i in 1..N: sample (Ray) → judge (Ray) → pairs → reference log-probs + DPO → eval → report

Every phase is recorded in the run directory's manifest when it finishes and skipped when the
driver is rerun; sampling and judging resume at shard granularity. Phases talk only through
files in the run directory.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reclaif.atomic import atomic_write_json, atomic_write_jsonl, read_json, read_jsonl
from reclaif.config import RunConfig
from reclaif.config_load import load_config, to_dict
from reclaif.data import load_examples, load_items, resolve_data_dir
from reclaif.data.heldout import HeldOut, check_held_out
from reclaif.data.interactions import fit_windows
from reclaif.errors import PhaseError, ReclaifError
from reclaif.faults import maybe_fail
from reclaif.pipeline.store import RunStore
from reclaif.records import Example, PreferencePair, Verdict
from reclaif.run_layout import BASE, SFT, stage_name, training_stage
from reclaif.comparison.methods import is_learned, make_ranker
from reclaif.distributed.pool import PoolReport, init_ray, make_pool
from reclaif.distributed.workers import JudgeWorker, SamplerWorker
from reclaif.evidence import apply_saved, build_evidence, evidence_cache, load_evaluation_models
from reclaif.judge import make_explainability_scorer, preference_pair
from reclaif.judge.audit import audit
from reclaif.llm.models import load_tokenizer, resolve_model
from reclaif.metrics.diversity import DiversityScorer
from reclaif.metrics.evaluate import evaluate_rankings
from reclaif.parsing import is_valid, parse_recommendation
from reclaif.pipeline.answer_groups import endpoint_counts, write_groups
from reclaif.pipeline.launcher import render_launch, run_launch
from reclaif.pipeline.report import write_report
from reclaif.prompts import render_recommender
from reclaif.recommender import fit_answered
from reclaif.teacher import make_teacher

log = logging.getLogger(__name__)


def _seed(*parts: Any) -> int:
    """A stable per-shard seed, so a retried shard samples exactly what the first attempt did."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def _shards(rows: list[dict], size: int) -> list[list[dict]]:
    return [rows[i:i + size] for i in range(0, len(rows), max(1, size))]


@dataclass
class RunSplits:
    """A run's inputs: `train` (SFT, sampling and DPO prompts), `evaluation` (held out from
    them and from `windows`), the held-out report, and `windows` (the interactions evidence
    models and learned baselines are fitted on: reclaif.data.interactions)."""

    train: list[Example]
    evaluation: list[Example]
    held: HeldOut
    windows: list[Example]


def run_splits(cfg: RunConfig) -> RunSplits:
    """A run's splits: `check_held_out` on the whole evaluation split against every training
    input, then the first `max_eval_examples` of what passed. The check is the same in both
    evidence modes, so a hybrid and a names-only run evaluate the same examples. `reclaif eval
    --methods model:PATH` uses it to check a run's checkpoint against the run's own inputs."""
    d = cfg.data
    path = resolve_data_dir(d.path)
    train_all = load_examples(path, split=d.train_split)
    evaluation = load_examples(path, split=d.eval_split)
    train = train_all[:d.max_train_examples] if d.max_train_examples else train_all
    if not train or not evaluation:
        raise ReclaifError(f"{path}: {len(train)} '{d.train_split}' and {len(evaluation)} "
                           f"'{d.eval_split}' examples; both must be non-empty")
    windows = fit_windows(path, d.train_split, train_all)
    known = {ex.id for ex in train}
    inputs = train + [w for w in windows if w.id not in known]
    what = f"'{d.train_split}' (SFT, sampling, DPO)" + (
        f" + {len(windows):,} interaction windows (evidence, baselines)" if windows else "")
    # Held-out discipline: no evaluation example is in any SFT, sampling, DPO or fit input.
    held = check_held_out(inputs, evaluation, what=what)
    kept = held.kept[:d.max_eval_examples] if d.max_eval_examples else held.kept
    return RunSplits(train, kept, held, windows)


class Driver:
    def __init__(self, cfg: RunConfig, run_dir: str | Path) -> None:
        self.store = RunStore(run_dir)
        # The inputs are read before the config is frozen: a first start that fails on bad
        # input (a wrong data.path) leaves nothing behind, so its corrected rerun is not
        # refused as "another config".
        self.data_path = resolve_data_dir(cfg.data.path)
        self.items = load_items(self.data_path)
        splits = run_splits(cfg)
        self.cfg = self.store.freeze_config(cfg)
        self.train, self.eval, self.held_out = splits.train, splits.evaluation, splits.held
        self.windows = splits.windows
        self.top_k = self.cfg.data.top_k
        self._samplers = None
        self._samplers_model: str | None = None
        self._evidence_ready = self.cfg.evidence.mode == "none"

    # --------------------------------------------------------------------------- the recipe
    def run(self) -> Path:
        # Ray starts on first use (samplers(), judge()): a resumed run whose remaining phases
        # need no actor (training, a finished run) skips the seconds a local Ray takes.
        try:
            self.evidence()
            if self.base_examples():
                self.evaluate(BASE, self.base_model(), self.base_examples())
            if self.cfg.sft.enabled:
                self.teacher_data()
                self.train_phase("sft", 0)
                self.evaluate(SFT, str(self.store.checkpoint(SFT)))
            for i in range(1, self.cfg.dpo.iterations + 1):
                stage = stage_name(i)
                self.sample(i)
                self.judge(i)
                self.pairs(i)
                self.train_phase("dpo", i)
                self.evaluate(stage, str(self.store.checkpoint(stage)))
        finally:
            self.release_samplers()
        return self.report()

    # --------------------------------------------------------------------------- models
    def base_model(self) -> str:
        return resolve_model(self.cfg.recommender.model, self.cfg.recommender.cache_dir or None)

    def base_examples(self) -> list[Example]:
        """The evaluation examples the base model is scored on: the first eval.base_examples
        (-1: all, 0: none). The base model is rarely valid on these prompts, so a full
        evaluation of it would cost as much as a trained stage's to say little more."""
        n = self.cfg.eval.base_examples
        return list(self.eval) if n < 0 else self.eval[:n]

    def policy_before(self, iteration: int) -> str:
        if iteration > 1:
            return str(self.store.checkpoint(stage_name(iteration - 1)))
        return str(self.store.checkpoint(SFT)) if self.cfg.sft.enabled else self.base_model()

    def samplers(self, model: str):
        """The sampler pool, on `model`: a pool on another checkpoint is released first, so
        new weights come as new actors (no engine swapped inside a process that holds a GPU)."""

        if self._samplers is not None and self._samplers_model != model:
            self.release_samplers()
        if self._samplers is None:
            r = self.cfg.ray
            cpus = max(1, r.num_cpus // max(1, r.num_samplers)) if not r.address else 1
            spec = to_dict(self.cfg.recommender)
            # without Ray the sampler is in this process: 0 leaves its torch threads (the
            # trainer's too) as they are, ray.num_cpus being the local Ray's
            threads = cpus if r.enabled else 0
            self._samplers = make_pool(r, SamplerWorker,
                                       (spec, str(self.data_path), self.top_k, threads),
                                       num_actors=r.num_samplers, num_cpus=cpus if not r.address else 1,
                                       num_gpus=r.gpus_per_sampler,
                                       gpu_keys="ray.num_samplers x ray.gpus_per_sampler")
            self._samplers_model = model
            self._lifecycle("samplers:up", model=model, actors=len(self._samplers.actors))
        return self._samplers

    def release_samplers(self) -> None:
        """Kills the sampler actors and waits until their processes are gone from their nodes
        (and from nvidia-smi): what holds the GPUs (vLLM takes 90% of each) must have let go
        before a trainer starts on them, on one machine or a cluster, fresh or resumed."""
        if self._samplers is None:
            return
        t0 = time.time()
        where = self._samplers.shutdown(wait_s=self.cfg.ray.release_timeout_s)
        self._samplers = self._samplers_model = None
        self._lifecycle("samplers:released", processes=where, seconds=round(time.time() - t0, 2))

    def _lifecycle(self, event: str, **info: Any) -> None:
        """One line per sampler start/release and training start/end (RUN/lifecycle.jsonl):
        the order GPUs change hands in, for the user and the tests."""
        self.store.append_event(event, **info)

    # --------------------------------------------------------------------------- phases
    def evidence(self) -> None:
        """Hybrid mode: fit the evidence models (out of fold for the training prompts) and give
        every training and evaluation example its evidence; resumed, read what was written."""

        if self._evidence_ready:
            return
        out = self.store.evidence_dir()
        if self.store.is_done("evidence"):
            self.train = apply_saved(self.train, out / "train.jsonl")
            self.eval = apply_saved(self.eval, out / "eval.jsonl")
            self._evidence_ready = True
            return
        t0 = time.time()
        ev = build_evidence(self.cfg.evidence, self.train, self.eval, self.windows, self.items,
                            out, seed=self.cfg.seed, cache_root=evidence_cache(self.cfg.evidence))
        self.train, self.eval = ev.train, ev.evaluation
        baselines = self._evidence_baselines(out)
        atomic_write_json(out / "baselines.json", baselines)
        maybe_fail("evidence:end")
        self.store.mark_done("evidence", ev.files + [out / "baselines.json"],
                             description=ev.description, windows=len(self.windows),
                             folds=self.cfg.evidence.folds)
        self._evidence_ready = True
        self._timed("evidence", t0)

    def _evidence_baselines(self, out: Path) -> dict[str, Any]:
        """The evaluation model's own rankings (SASRec-CE, transition), the two floors and
        eval.baselines, on exactly the run's evaluation examples: the rows the report shows
        beside the LLM's."""

        models = load_evaluation_models(self.store.root, self.items)
        rankers = {"random": make_ranker("random", self.cfg.seed),
                   "popularity": make_ranker("popularity", self.cfg.seed)}
        rankers["popularity"].fit(self.windows or self.train, self.items)
        if models.sasrec is not None:
            rankers["sasrec-ce"] = models.sasrec
        if models.transition is not None:
            rankers["transition"] = models.transition
        if models.bm25 is not None:
            rankers["bm25"] = models.bm25
        for method in self.cfg.eval.baselines:
            if method not in rankers:
                # SASRec rows get the evidence model's epoch budget: CE and BCE alike
                rankers[method] = make_ranker(method, self.cfg.seed,
                                              sasrec_epochs=self.cfg.evidence.sasrec_epochs,
                                              sasrec_device=self.cfg.evidence.device)
                if is_learned(method):
                    rankers[method].fit(self.windows or self.train, self.items)
        rows = {}
        for name, ranker in rankers.items():
            ranked = {ex.id: ranker.rank(ex)[:self.top_k] for ex in self.eval}
            valid = {ex.id: is_valid(ranked[ex.id], ex.candidates, self.top_k)
                     for ex in self.eval}
            rows[name] = evaluate_rankings(self.eval, ranked, valid, self.items,
                                           self.cfg.eval.k, None)
        return rows

    def _timed(self, key: str, t0: float) -> None:
        """Wall time per phase, kept across restarts (timings.json), shown in the report and
        logged as the phase ends (the progress a long run prints)."""
        seconds = time.time() - t0
        self.store.record_timing(key, seconds)  # a damaged file is moved aside
        log.info("phase %s done in %.1f s", key, seconds)

    def _generate(self, key: str, examples: list[Example], model: str, out_dir: Path,
                  n: int, temperature: float, top_p: float, max_new_tokens: int,
                  seed_base: tuple, max_total_tokens: int = 0) -> list[dict]:
        """Fans generation over the sampler pool, one atomically written file per shard."""

        r = self.cfg.ray
        rows = [e.to_json() for e in examples]
        shards = _shards(rows, r.shard_size)
        shard_dir = out_dir / "shards"
        shard_dir.mkdir(parents=True, exist_ok=True)

        def args(i: int) -> tuple:
            params = {"n": n, "temperature": temperature, "top_p": top_p,
                      "max_new_tokens": max_new_tokens, "seed": _seed(*seed_base, i),
                      "max_total_tokens": max_total_tokens}
            return (model, params, f"{key}:{i}")

        def write(i: int, rows: list[dict]) -> None:
            self.store.write_shard(shard_dir, i, rows)
            maybe_fail(f"{key}:written:{i}")

        if all(self.store.shard_done(shard_dir, i) for i in range(len(shards))):
            # Resumed after the last shard was written: no sampler (model load, Ray) to start.
            report = PoolReport(shards=len(shards), skipped=len(shards))
        else:
            report = self.samplers(model).run("sample", shards, args, write=write,
                                         is_done=lambda i: self.store.shard_done(shard_dir, i),
                                         max_in_flight=r.max_in_flight,
                                         max_retries=r.max_retries, desc=key)
        out = self.store.merge_shards(shard_dir, len(shards), out_dir / "samples.jsonl")
        atomic_write_json(out_dir / "sample_report.json", report.to_json())
        return out

    def teacher_data(self) -> None:
        if self.store.is_done("sft/teacher"):
            return
        t0 = time.time()
        examples = self.train[:self.cfg.sft.max_examples or None]
        teacher = make_teacher(self.cfg.teacher, self.items, self.top_k)
        # Each prompt fits sft.max_length with its answer (fewer candidates where needed), so
        # SFT trains the prompts evaluation shows, never one cut from the left.
        from reclaif.train.data import answer_tokens, prompt_tokens  # torch: only here

        tok = load_tokenizer(self.cfg.recommender.model, self.cfg.recommender.cache_dir or None)
        examples, responses = fit_answered(
            examples, self.items, self.top_k, teacher.respond_many,
            lambda p: len(prompt_tokens(tok, p)), lambda a: len(answer_tokens(tok, a)),
            self.cfg.sft.max_length)
        prompts = [render_recommender(e, self.items, self.top_k) for e in examples]
        rows = [{"id": e.id, "prompt": p, "response": r}
                for e, p, r in zip(examples, prompts, responses)]
        self.store.phase_dir(SFT)
        out = self.store.teacher()
        atomic_write_jsonl(out, rows)
        self.store.mark_done("sft/teacher", [out], count=len(rows), teacher=self.cfg.teacher.kind)
        self._timed("sft/teacher", t0)

    def sample(self, i: int) -> None:
        key = f"{stage_name(i)}/sample"
        if self.store.is_done(key):
            return
        t0 = time.time()
        s = self.cfg.sampling
        out_dir = self.store.iter_dir(i)
        rows = self._generate(key, self.sampling_prompts(i), self.policy_before(i), out_dir,
                              s.num_samples,
                              s.temperature, s.top_p, s.max_new_tokens, (self.cfg.seed, "sample", i),
                              max_total_tokens=self.cfg.dpo.max_length)
        maybe_fail("sample:end")
        self.store.mark_done(key, [out_dir / "samples.jsonl"], count=len(rows))
        self._timed(key, t0)

    def sampling_prompts(self, i: int) -> list[Example]:
        """Iteration i's prompts: all training prompts, or the i-th slice of max_prompts. With
        sft.max_examples below the training prompts, the slices start after SFT's, so every
        iteration samples prompts neither SFT nor an earlier iteration saw (until they wrap).
        Also with sft.enabled false: a run that starts from another run's SFT checkpoint
        (recommender.model=RUN/sft/checkpoint, the same data and sft.max_examples) samples what
        that run's iterations sample, never the prompts its SFT trained on."""
        n, total = self.cfg.sampling.max_prompts, len(self.train)
        if not n or n >= total:
            return self.train
        sft = self.cfg.sft
        offset = sft.max_examples if 0 < sft.max_examples < total else 0
        start = (offset + (i - 1) * n) % total
        return [self.train[(start + j) % total] for j in range(n)]

    def judge(self, i: int) -> None:
        key = f"{stage_name(i)}/judge"
        if self.store.is_done(key):
            return
        t0 = time.time()
        r = self.cfg.ray
        out_dir = self.store.iter_dir(i)
        by_id = {e.id: e for e in self.train}
        samples = read_jsonl(out_dir / "samples.jsonl")
        rows = [{**s, "example": by_id[s["example_id"]].to_json()} if not s.get("failed") else s
                for s in samples]
        shards = _shards(rows, r.shard_size)
        shard_dir = out_dir / "verdict_shards"
        shard_dir.mkdir(parents=True, exist_ok=True)
        # Give the judge the CPUs/GPUs the samplers held (on a small cluster the judge
        # actors could otherwise wait forever); samplers are recreated next iteration.
        self.release_samplers()
        pool = make_pool(r, JudgeWorker, (to_dict(self.cfg.judge), str(self.data_path), self.top_k),
                         num_actors=r.num_judges, num_cpus=1)
        try:
            def write(j: int, rows: list[dict]) -> None:
                self.store.write_shard(shard_dir, j, rows)
                maybe_fail(f"{key}:written:{j}")

            report = pool.run("judge_rows", shards, lambda j: (f"judge:{j}",), write=write,
                              is_done=lambda j: self.store.shard_done(shard_dir, j),
                              max_in_flight=r.max_in_flight, max_retries=r.max_retries, desc=key)
        finally:
            pool.shutdown()
        verdicts = self.store.merge_shards(shard_dir, len(shards), out_dir / "verdicts.jsonl")
        atomic_write_json(out_dir / "judge_report.json", report.to_json())
        self.store.mark_done(key, [out_dir / "verdicts.jsonl"], count=len(verdicts))
        self._timed(key, t0)

    def pairs(self, i: int) -> None:
        key = f"{stage_name(i)}/pairs"
        if self.store.is_done(key):
            return
        out_dir = self.store.iter_dir(i)
        rows = read_jsonl(out_dir / "verdicts.jsonl")
        by_id = {e.id: e for e in self.train}
        if self.cfg.sampling.num_samples > 2:  # ranked groups: groups.jsonl and their pairs
            groups, stats = write_groups(rows, by_id, self.items, self.top_k,
                                         self.store.groups(i), self.store.pairs(i),
                                         out_dir / "judge_stats.json")
            self.store.mark_done(key, [self.store.groups(i), self.store.pairs(i)],
                                 count=len(groups))
            if not groups:
                raise ReclaifError(f"{self.store.groups(i)}: the judge kept no answer group in "
                                   f"iteration {i} ({stats['failed']} of {len(rows)} records "
                                   f"failed, {stats['unparseable']} unparseable; see "
                                   f"{out_dir / 'judge_stats.json'}); DPO has nothing to train on")
            return
        pairs: list[PreferencePair] = []
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
                pairs.append(pair)
        out = self.store.pairs(i)
        atomic_write_jsonl(out, [p.to_json() for p in pairs])
        stats = audit([r for r in rows if not r.get("failed")], by_id, self.items, self.top_k)
        stats.update(pairs_kept=len(pairs), dropped_capped_over_finished=capped_over_finished,
                     capped_rejected=sum(p.rejected_truncated for p in pairs),
                     **endpoint_counts(rows))
        atomic_write_json(out_dir / "judge_stats.json", stats)
        self.store.mark_done(key, [out], count=len(pairs))
        if not pairs:
            raise ReclaifError(f"{out}: the judge kept no preference pair in iteration {i} "
                               f"({stats['failed']} of {len(rows)} records failed, "
                               f"{stats['unparseable']} unparseable; see "
                               f"{out_dir / 'judge_stats.json'}); DPO has nothing to train on")

    def train_phase(self, phase: str, i: int) -> None:
        key = f"{training_stage(phase, i)}/train"
        if self.store.is_done(key):
            return
        t0 = time.time()
        # The sampler actors' GPUs (and cores) go to training, on one machine or a cluster.
        self.release_samplers()
        self._lifecycle("train:start", phase=key)
        maybe_fail(f"{phase}:start")
        if self.cfg.launch.mode == "inprocess":
            if phase == "sft":
                from reclaif.train.sft import run_sft  # torch: only in the process that trains

                metrics = run_sft(self.cfg, self.store.root)
            else:
                from reclaif.train.dpo import run_dpo  # torch: only in the process that trains

                metrics = run_dpo(self.cfg, self.store.root, i)
        else:
            metrics = self._launch(phase, i)
        ckpt = self.store.checkpoint(training_stage(phase, i))
        if not (ckpt / "config.json").exists():
            raise ReclaifError(f"{key}: training finished without a checkpoint at {ckpt}")
        self.store.mark_done(key, sorted(ckpt.glob("*.safetensors")), metrics=metrics or {})
        self._lifecycle("train:end", phase=key)
        self._timed(key, t0)

    def _launch(self, phase: str, i: int) -> dict:
        from reclaif.train.checkpoint import latest_train_state  # torch: only when launching

        log_path = self.store.train_log(phase, i)  # run_launch makes logs/
        argv = render_launch(self.cfg.launch.template, phase=phase, run_dir=str(self.store.root),
                             iteration=i, config=str(self.store.root / "config.yaml"))
        stage = training_stage(phase, i)
        try:
            run_launch(argv, log_path)
        except PhaseError as e:
            # Tell the user what a rerun will do: the trainer resumes from its last saved state.
            state = latest_train_state(self.store.train_state(stage))
            resume = (f"resumes from {state}" if state is not None
                      else "starts the phase again (no training state was saved)")
            raise PhaseError(f"{stage} training failed: {e}. Rerunning the same command "
                             f"{resume}") from None
        metrics_file = self.store.train_metrics(stage)
        return read_json(metrics_file) if metrics_file.exists() else {}

    def evaluate(self, stage: str, model: str, examples: list[Example] | None = None) -> None:
        """Scores `model` on `examples` (default: every evaluation example)."""
        key = f"{stage}/eval"
        if self.store.is_done(key):
            return
        t0 = time.time()
        e = self.cfg.eval
        examples = self.eval if examples is None else examples
        out_dir = self.store.phase_dir(stage)
        rows = self._generate(key, examples, model, out_dir / "eval", 1, e.temperature, 1.0,
                              e.max_new_tokens, (self.cfg.seed, "eval"))
        by_id = {x.id: x for x in examples}
        recs = {}
        for row in rows:
            if row.get("failed"):
                continue
            recs[row["example_id"]] = parse_recommendation(row["answers"][0], by_id[row["example_id"]],
                                                           self.items, self.top_k)
        scorer = make_explainability_scorer(self.cfg.explainability, self.items, self.top_k)
        expl = {i: scorer.score(by_id[i], r.raw_text) for i, r in recs.items() if r.valid}
        result = evaluate_rankings(examples, {i: r.items for i, r in recs.items()},
                                   {i: r.valid for i, r in recs.items()}, self.items, e.k,
                                   None if e.diversity_model == "none" else
                                   DiversityScorer(self.items, e.diversity_model), expl)
        result.update(stage=stage, model=model, split=self.cfg.data.eval_split,
                      held_out=self.held_out.note(),
                      failed=sum(1 for r in rows if r.get("failed")))
        atomic_write_jsonl(out_dir / "predictions.jsonl",
                           [{"id": i, **r.to_json()} for i, r in recs.items()])
        atomic_write_json(out_dir / "eval.json", result)
        maybe_fail(f"eval:{stage}")
        self.store.mark_done(key, [out_dir / "eval.json"])
        self._timed(key, t0)
        self.report()

    def report(self) -> Path:
        return write_report(self.store.root)


# ------------------------------------------------------------------------------- commands
def run_config(config: str | Path | None, run_dir: str | Path | None,
               overrides: list[str] | None = None) -> tuple[RunConfig, Path]:
    """The config of a run and its directory: `config`, or else the run directory's frozen
    config.yaml where it has one (checked against the store's record), or else the defaults;
    the directory defaults to runs/NAME."""
    if config is None and run_dir and (Path(run_dir) / "config.yaml").exists():
        RunStore(run_dir).check_config_file()  # damaged: one line saying so
        cfg = load_config(Path(run_dir) / "config.yaml", overrides)
    else:
        cfg = load_config(config, overrides)
    return cfg, Path(run_dir or Path("runs") / cfg.name)


PHASES = ("sft", "sample", "judge")


def run_phase(cfg: RunConfig, run_dir: Path, phase: str, iteration: int = 0) -> Path:
    """One phase on a run directory (sft: teacher data + SFT; sample; judge: verdicts and
    pairs of `iteration`, 1-based); returns the rewritten report."""
    if phase not in PHASES:
        raise ReclaifError(f"phase '{phase}' is not one of {list(PHASES)}")
    if phase == "sample" and iteration < 1:
        raise ReclaifError(f"sample: iteration {iteration} must be at least 1 (1-based)")
    driver = Driver(cfg, run_dir)
    driver.evidence()

    if phase in ("sample", "judge") and cfg.ray.enabled:
        init_ray(cfg.ray.address, cfg.ray.num_cpus)
    try:
        if phase == "sft":
            driver.teacher_data()
            driver.train_phase("sft", 0)
        elif phase == "sample":
            driver.sample(iteration)
        else:
            driver.judge(iteration)
            driver.pairs(iteration)
        return driver.report()
    finally:
        driver.release_samplers()
