"""Mean recommender prompt tokens of hybrid prompts, with the real tokenizer and chat template:
what each candidate's evidence costs (issue 29, compact evidence).

    python tests/prompt_tokens.py [--data sample] [--limit 300] [--models DIR] [--sources ...]

Fits the evidence models the proof config fits (SASRec-CE 9 epochs, transitions; on the
training sequences) once into --models, or loads them from there, and annotates the first
--limit validation prompts as the evaluation stage does.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from reclaif.data import load_examples, load_items
from reclaif.data.interactions import fit_windows
from reclaif.evidence.models import EvidenceModels, resolve_sources
from reclaif.llm.models import render_chat, resolve_model
from reclaif.prompts import render_recommender
from reclaif.teacher import OfflineTeacher


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="sample")
    p.add_argument("--limit", type=int, default=300)
    p.add_argument("--models", default="/tmp/reclaif-prompt-tokens-evidence")
    p.add_argument("--sources", default="", help="comma list (default: the task's default)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--show", type=int, default=1, help="prompts to print")
    a = p.parse_args(argv)
    from transformers import AutoTokenizer

    items = load_items(a.data)
    valid = load_examples(a.data, "valid")[: a.limit]
    sources = resolve_sources([s for s in a.sources.split(",") if s], valid[0].task)
    models_dir = Path(a.models)
    if (models_dir / "fit.json").is_file():
        m = EvidenceModels.load(models_dir, items)
        # the saved fit may name other sources: the unlearned ones (tags, tag_overlap) are
        # built from the catalog, as load() does
        m.sources = sources
        m._fit_unlearned(items, 0)
    else:
        train = load_examples(a.data, "train")
        m = EvidenceModels.fit(fit_windows(a.data, "train", train), items, sources,
                               sasrec_epochs=9)
        m.save(models_dir)
    m.prepare(valid)
    annotated = [m.annotate(ex, items) for ex in valid]
    tok = AutoTokenizer.from_pretrained(resolve_model("default"))

    def n_tokens(text: str) -> int:
        return len(tok(text, add_special_tokens=False).input_ids)

    total = [n_tokens(render_chat(tok, render_recommender(ex, items, a.top_k)))
             for ex in annotated]
    evidence = [sum(n_tokens(f" [{t}]") for t in ex.evidence.values()) for ex in annotated]
    lines = [n_tokens(f" [{t}]") for ex in annotated for t in ex.evidence.values()]
    for ex in annotated[: a.show]:
        print(render_recommender(ex, items, a.top_k))
    print(f"sources {sources}: {len(total)} prompts, mean prompt tokens {np.mean(total):.1f} "
          f"(max {max(total)}), of which candidate evidence {np.mean(evidence):.1f}; "
          f"{np.mean(lines):.1f} tokens per evidence bracket")
    # what SFT trains on and max_new_tokens must hold: the offline teacher's answers
    teacher = OfflineTeacher(items, a.top_k)
    answers = [n_tokens(teacher.respond(ex)) + 1 for ex in annotated]  # + the end of turn
    print(f"offline teacher answers: mean {np.mean(answers):.1f} tokens (max {max(answers)}); "
          f"prompt + answer max {max(p + q for p, q in zip(total, answers))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
