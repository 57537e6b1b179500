"""The two actor roles: a sampler that holds a recommender model, a judge that holds a judge.

Workers are plain classes (PoolWorker subclasses; ActorPool makes them Ray actors), so tests and
a Ray-less debug path can call them directly. Each call carries everything that defines its
output (model path, seed), so a shard retried on a restarted actor produces exactly the records
the first attempt would.
"""
from __future__ import annotations

from typing import Any

from reclaif.distributed.pool import PoolWorker
from reclaif.faults import maybe_fail
from reclaif.config import JudgeConfig, LLMSpec
from reclaif.config_load import from_dict
from reclaif.data import load_items
from reclaif.judge import make_judge
from reclaif.llm import make_client
from reclaif.recommender import Recommender
from reclaif.records import Example


def _set_threads(threads: int) -> None:
    if threads <= 0:
        return  # nothing to set: a judge actor with a remote LLM never needs torch
    import torch

    torch.set_num_threads(threads)


class SamplerWorker(PoolWorker):
    """Samples answers from the recommender; reloads weights when asked for another checkpoint."""

    def __init__(self, spec: dict[str, Any], data_path: str, top_k: int, threads: int = 0) -> None:
        _set_threads(threads)
        self.spec = from_dict(LLMSpec, spec)
        self.items = load_items(data_path)
        self.top_k = top_k
        self.model_path: str | None = None
        self.client = None

    def _ensure(self, model_path: str) -> None:
        if self.client is None:
            spec_dict = dict(vars(self.spec))
            spec_dict["model"] = model_path

            self.client = make_client(LLMSpec(**spec_dict))
        elif model_path != self.model_path:
            # hf swaps weights in place; vllm refuses (the driver starts a new actor instead)
            self.client.reload(model_path)
        self.model_path = model_path

    def sample(self, rows: list[dict], model_path: str, params: dict[str, Any],
               fault_point: str = "") -> list[dict]:
        """rows: Example JSON. Returns {example_id, prompt, answers[n], truncated[n]} per
        example; truncated[j] says answer j stopped at max_new_tokens (None: the backend
        cannot tell), so the pairs never train an end of turn it did not emit, and
        candidates_dropped where the prompt was fitted (Recommender.fit). params: n,
        temperature, top_p, max_new_tokens, seed, and max_total_tokens (0: the context only)."""

        self._ensure(model_path)
        examples = [Example.from_json(r) for r in rows]
        rec = Recommender(self.client, self.items, self.top_k)
        # Prompts fit the model's context and, for DPO's samples, the trainer's max_length
        # less the answer: candidates dropped at render time, never a prompt cut later.
        shown = rec.fit(examples, params["max_new_tokens"], params.get("max_total_tokens", 0))
        prompts = rec.prompts(shown)
        if fault_point:
            maybe_fail(fault_point)
        outs = self.client.sample(prompts, n=params["n"], temperature=params["temperature"],
                                  top_p=params["top_p"], max_new_tokens=params["max_new_tokens"],
                                  seed=params["seed"])
        rows = [{"example_id": ex.id, "prompt": p, "answers": [c.text for c in o],
                 "truncated": [c.truncated for c in o]}
                for ex, p, o in zip(examples, prompts, outs)]
        # The answers' tokens and log-probs under this policy: DPO's reference log-probs where
        # its reference is this model in this dtype (reclaif.train.reference)
        sampled_by = {"model": model_path, "dtype": self.client.weights_dtype() or ""}
        for row, o in zip(rows, outs):
            if all(c.logp is not None and c.token_ids for c in o):
                row.update(token_ids=[c.token_ids for c in o], logps=[c.logp for c in o],
                           sampled_by=sampled_by)
        for row, ex, fit in zip(rows, examples, shown):
            if len(fit.candidates) < len(ex.candidates):
                row["candidates_dropped"] = len(ex.candidates) - len(fit.candidates)
        return rows


class JudgeWorker(PoolWorker):
    """Compares the two answers of each sample row with the judge, or ranks a row's answers
    where it has more (sampling.num_samples > 2)."""

    def __init__(self, judge_cfg: dict[str, Any], data_path: str, top_k: int,
                 threads: int = 0) -> None:

        _set_threads(threads)
        self.items = load_items(data_path)
        self.judge = make_judge(from_dict(JudgeConfig, judge_cfg), self.items, top_k)

    def judge_rows(self, rows: list[dict], fault_point: str = "") -> list[dict]:
        """rows: sample rows, each with its Example JSON under "example" (so a judge actor needs
        only the item catalog, not the whole dataset). Returns verdict rows
        {example_id, prompt, a, b, verdict, truncated: [a's, b's] where the samples say};
        an LLM judge adds what each record cost
        (retries, unparseable), and a record whose call failed for good becomes a failed row
        {example_id, failed, error, failed_calls, retries}, skipped and counted downstream."""

        live = [r for r in rows if not r.get("failed")]
        examples = [Example.from_json(r["example"]) for r in live]
        if fault_point:
            maybe_fail(fault_point)
        if any(len(r["answers"]) > 2 for r in live):
            return self._rank_rows(rows, live, examples)
        verdicts = self.judge.compare_many(examples, [(r["answers"][0], r["answers"][1])
                                                      for r in live])
        # Only the LLM judge reports per-record outcomes; other judges leave rows as they were.
        outcomes = self.judge.last_outcomes or [None] * len(live)
        out = []
        for r, v, o in zip(live, verdicts, outcomes):
            if o is not None and o.failed:
                out.append({"example_id": r["example_id"], "failed": True, "error": o.error[:500],
                            "failed_calls": o.failed_calls, "retries": o.retries})
                continue
            row = {"example_id": r["example_id"], "prompt": r["prompt"], "a": r["answers"][0],
                   "b": r["answers"][1], "verdict": v.to_json()}
            # sample files written before these fields have none of them
            row.update({k: r[k][:2] for k in ("truncated", "token_ids", "logps") if k in r})
            if "sampled_by" in r:
                row["sampled_by"] = r["sampled_by"]
            if o is not None:
                row.update(retries=o.retries, unparseable=o.unparseable)
            out.append(row)
        out += [{k: v for k, v in r.items() if k != "example"} for r in rows if r.get("failed")]
        return out

    def _rank_rows(self, rows: list[dict], live: list[dict],
                   examples: list[Example]) -> list[dict]:
        """Group rows {example_id, prompt, answers, ranking (reclaif.judge.ranking.Ranking),
        and the sample row's truncated, token_ids, logps, sampled_by for every answer}; failed
        rows as judge_rows writes them, a group failing where any of its comparisons did."""
        rankings = self.judge.rank_many(examples, [r["answers"] for r in live])
        outcomes = self.judge.last_outcomes or [None] * len(live)
        out = []
        for r, ranking, o in zip(live, rankings, outcomes):
            if o is not None and o.failed:
                out.append({"example_id": r["example_id"], "failed": True, "error": o.error[:500],
                            "failed_calls": o.failed_calls, "retries": o.retries})
                continue
            row = {"example_id": r["example_id"], "prompt": r["prompt"], "answers": r["answers"],
                   "ranking": ranking.to_json()}
            row.update({k: r[k] for k in ("truncated", "token_ids", "logps", "sampled_by")
                        if k in r})
            if o is not None:
                row.update(retries=o.retries, unparseable=o.unparseable)
            out.append(row)
        out += [{k: v for k, v in r.items() if k != "example"} for r in rows if r.get("failed")]
        return out
