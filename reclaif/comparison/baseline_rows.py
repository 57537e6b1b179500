"""The baseline rows a run's report shows beside the LLM's (RUN/evidence/baselines.json): the
evidence models' own rankings, the two floors and eval.baselines, on exactly the run's
evaluation examples. Here, beside the rankers' factory (`methods.make_ranker`), which the
evidence package sits below."""
from __future__ import annotations

from typing import Any

from reclaif.baselines.base import Ranker
from reclaif.comparison.methods import is_learned, make_ranker
from reclaif.config import RunConfig
from reclaif.evidence import EvidenceModels
from reclaif.metrics.evaluate import evaluate_rankings
from reclaif.parsing import is_valid
from reclaif.records import Example, Item


def evidence_baselines(cfg: RunConfig, models: EvidenceModels, evaluation: list[Example],
                       fit_on: list[Example], items: dict[str, Item]) -> dict[str, Any]:
    """{row name: metrics} for the evaluation model's rankings (SASRec-CE, transition, BM25,
    where fitted), random, popularity and each eval.baselines method; what has to be fitted
    is fitted on `fit_on` (the run's interaction windows, else its training prompts)."""
    top_k = cfg.data.top_k
    rankers: dict[str, Ranker] = {"random": make_ranker("random", cfg.seed),
                                  "popularity": make_ranker("popularity", cfg.seed)}
    rankers["popularity"].fit(fit_on, items)
    if models.sasrec is not None:
        rankers["sasrec-ce"] = models.sasrec
    if models.transition is not None:
        rankers["transition"] = models.transition
    if models.bm25 is not None:
        rankers["bm25"] = models.bm25
    for method in cfg.eval.baselines:
        if method not in rankers:
            # SASRec rows get the evidence model's epoch budget: CE and BCE alike
            rankers[method] = make_ranker(method, cfg.seed,
                                          sasrec_epochs=cfg.evidence.sasrec_epochs,
                                          sasrec_device=cfg.evidence.device)
            if is_learned(method):
                rankers[method].fit(fit_on, items)
    rows = {}
    for name, ranker in rankers.items():
        ranked = {ex.id: ranker.rank(ex)[:top_k] for ex in evaluation}
        valid = {ex.id: is_valid(ranked[ex.id], ex.candidates, top_k) for ex in evaluation}
        rows[name] = evaluate_rankings(evaluation, ranked, valid, items, cfg.eval.k, None)
    return rows
