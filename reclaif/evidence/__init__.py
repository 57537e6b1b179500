"""Hybrid RecLAIF: what collaborative models say of each candidate, written into the prompt.

The paper's recommender sees names only; a 135M (or 7B) model cannot learn listening patterns
from a few hundred prompts, while SASRec fitted on the same training split ranks the true
artist first most of the time. In hybrid mode (`evidence.mode: hybrid`) each candidate line
carries that signal as text the model can read and cite, e.g.

    - Tom Waits [SASRec #2 31%; 14 listeners next; tags: blues, folk with Nick Cave (0.38)]

and the LLM reranks and explains. Sources: `sasrec` (full-softmax CE, rank and probability among
the candidates), `transition` (distinct training users who went there straight from the last
history item), `tag_overlap` (music: clean tags shared with the history, default), `tags` (the
item's top tags), `bm25` (retrieval). Fitting is out
of fold for training prompts (`folds.py`), on the training split only; the models live in the
run directory (`evidence/fold-N/`, `evidence/full/`), are hashed into the manifest, and the
evaluation model is reused for new examples by `reclaif eval --methods model:RUN/...` and
`reclaif recommend --model RUN/...`. Fitted models are also kept in a cache shared by runs,
keyed by a hash of their inputs (`cache.py`), so a rerun on the same inputs fits nothing.
"""
from reclaif.evidence.folds import (EvidenceSet, apply_saved, build_evidence, check_no_leak,
                                    evidence_of_checkpoint, evidence_of_run, fold_of,
                                    load_evaluation_models, run_of_checkpoint)
from reclaif.evidence.cache import cache_dir as evidence_cache
from reclaif.evidence.models import EvidenceModels, resolve_sources
from reclaif.baselines.transition import TransitionRanker

__all__ = ["EvidenceModels", "EvidenceSet", "TransitionRanker", "apply_saved", "build_evidence",
           "check_no_leak", "evidence_cache", "evidence_of_checkpoint", "evidence_of_run",
           "fold_of", "load_evaluation_models", "resolve_sources", "run_of_checkpoint"]
