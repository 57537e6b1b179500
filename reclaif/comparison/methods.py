"""The methods a table compares on the same examples, by their `--methods` names: the
baselines' rankers (`reclaif.baselines`) and LLM recommenders, zero-shot or trained
(`llm_ranker`). It sits above the roles (an LLM method runs the recommender, a trained one
reads its run's evidence), so the rankers below it import none of them."""
from __future__ import annotations

from typing import Any

from reclaif.baselines.base import Ranker
from reclaif.errors import ReclaifError
from reclaif.baselines.dense import DenseRanker
from reclaif.baselines.floors import PopularityRanker, RandomRanker
from reclaif.baselines.tags import TagRanker
from reclaif.baselines.transition import TransitionRanker
from reclaif.comparison.llm_ranker import LLMRanker

LEARNED = ("popularity", "sasrec", "transition")  # methods whose fit() reads training examples


def make_ranker(method: str, seed: int = 0, top_k: int = 3, diversity: Any = None,
                max_new_tokens: int = 256, sasrec_epochs: int = 0,
                sasrec_device: str = "cpu") -> Ranker:
    """random | popularity | transition | bm25 | tags | dense[:MODEL] | sasrec[-ce|-bce] |
    llm:NAME | model:PATH.

    `diversity`: the table's DiversityScorer; the default dense ranker shares its model and
    item vectors (the same all-MiniLM-L6-v2 over the same `Item.text()`). `max_new_tokens`:
    the answer budget of LLM methods (the driver's `eval.max_new_tokens`, to compare alike).
    `sasrec_epochs`: SASRec's epoch budget (0 = SASRecConfig's own, early-stopped);
    `sasrec_device`: where it fits (evidence.device)."""
    if method == "random":
        return RandomRanker(seed=seed)
    if method == "popularity":
        return PopularityRanker(seed=seed)
    if method == "bm25":
        from reclaif.baselines.bm25 import BM25Ranker  # bm25s and scipy: only when asked for
        return BM25Ranker(seed=seed)
    if method == "dense" or method.startswith("dense:"):
        model = method.partition(":")[2] or "default"
        ranker = DenseRanker(model_name=model, seed=seed, name=method)
        if model == "default" and diversity is not None:
            ranker.shared = diversity
        return ranker
    if method == "transition":
        return TransitionRanker(seed=seed)
    if method == "tags":
        return TagRanker(seed=seed)
    if method in ("sasrec", "sasrec-ce", "sasrec-bce"):
        from reclaif.baselines.sasrec import SASRecConfig, SASRecRanker  # torch: only here
        loss = "bce" if method.endswith("bce") else "ce"
        budget = {"max_epochs": sasrec_epochs} if sasrec_epochs else {}
        return SASRecRanker(SASRecConfig(loss=loss, seed=seed, device=sasrec_device, **budget),
                            name=f"sasrec-{loss}")
    if method.startswith(("llm:", "model:")):
        return LLMRanker(method, top_k=top_k, max_new_tokens=max_new_tokens)
    raise ReclaifError(f"methods: unknown method {method!r}; known: random, popularity, "
                       "transition, bm25, tags, "
                       "dense[:MODEL], sasrec, sasrec-ce, sasrec-bce, llm:NAME, model:PATH")


def is_learned(method: str) -> bool:
    return method.split("-")[0] in LEARNED

