"""Prompts are fitted, never cut from the left: over its token budget, a recommender prompt
loses candidate lines from the end of its list (never a labelled one, never below top_k), or the
example is refused by name; SFT's prompts are fitted to what their teacher answer leaves."""
from __future__ import annotations

from dataclasses import replace

import pytest

from reclaif.config import LLMSpec, TeacherConfig
from reclaif.config_load import to_dict
from reclaif.data import load_examples, load_items
from reclaif.distributed.workers import SamplerWorker
from reclaif.errors import DataError
from reclaif.llm.base import LLMClient
from reclaif.llm.models import default_model_dir, load_tokenizer
from reclaif.prompts import render_recommender
from reclaif.recommender import Recommender, fit_answered, fit_candidates
from reclaif.teacher import make_teacher
from reclaif.train.data import answer_tokens, prompt_tokens

DATA = "sample"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(str(default_model_dir()))


@pytest.fixture(scope="module")
def items():
    return load_items(DATA)


def _long(ex):
    """The example with a long evidence line per candidate (the hybrid prompt's bulk)."""
    return replace(ex, evidence={c: "SASRec rank 3 of 20, p=0.12; tags: " + "indie rock, " * 12
                                 for c in ex.candidates})


def _count(tok):
    return lambda p: len(prompt_tokens(tok, p))


def test_an_over_budget_prompt_drops_candidates_from_the_end_but_never_the_label(tok, items):
    ex = _long(load_examples(DATA)[0])
    label = next(iter(ex.labels))
    full = _count(tok)(render_recommender(ex, items, 3))
    fit = fit_candidates(ex, items, 3, _count(tok), full - 150)
    assert _count(tok)(render_recommender(fit, items, 3)) <= full - 150
    kept = [c for c in ex.candidates if c in fit.candidates]
    assert fit.candidates == kept and label in fit.candidates  # order kept, label kept
    dropped = [c for c in ex.candidates if c not in fit.candidates]
    assert dropped
    # dropped from the end: every kept unlabelled candidate comes before every dropped one
    last_kept = max(ex.candidates.index(c) for c in fit.candidates if c != label)
    assert all(ex.candidates.index(d) > last_kept for d in dropped)
    assert set(fit.evidence) == set(fit.candidates)
    text = render_recommender(fit, items, 3)
    assert text.startswith(render_recommender(ex, items, 3)[:200])  # the head is whole


def test_a_prompt_within_budget_is_unchanged(tok, items):
    ex = load_examples(DATA)[0]
    assert fit_candidates(ex, items, 3, _count(tok), 10_000) is ex


def test_a_prompt_that_cannot_fit_is_refused_with_its_id_tokens_and_budget(tok, items):
    ex = _long(load_examples(DATA)[0])
    tokens = _count(tok)(render_recommender(ex, items, 3))
    with pytest.raises(DataError, match=rf"example {ex.id}: its recommender prompt takes "
                                        rf"{tokens} tokens, over the 100 left"):
        fit_candidates(ex, items, 3, _count(tok), 100)


def test_sft_prompts_fit_max_length_with_their_teacher_answers(tok, items):
    examples = [_long(e) for e in load_examples(DATA)[:4]]
    teacher = make_teacher(TeacherConfig(), items, 3)
    lengths = [_count(tok)(render_recommender(e, items, 3)) for e in examples]
    max_length = min(lengths) + 60  # every full prompt + answer is over it
    fitted, answers = fit_answered(examples, items, 3, teacher.respond_many, _count(tok),
                                   lambda a: len(answer_tokens(tok, a)), max_length)
    assert answers == teacher.respond_many(fitted)  # each answers the prompt it is trained on
    for ex, a in zip(fitted, answers):
        assert len(ex.candidates) < 20
        assert _count(tok)(render_recommender(ex, items, 3)) + len(answer_tokens(tok, a)) \
            <= max_length


class CountingStub(LLMClient):
    """No model: counts a prompt's tokens with the real tokenizer, answers 'x'."""

    def __init__(self, tok, context: int) -> None:
        self.tok, self.context = tok, context

    def generate(self, prompts, n=1, **kw):
        return [["x"] * n for _ in prompts]

    def prompt_tokens(self, prompt):
        return len(prompt_tokens(self.tok, prompt))

    def context_length(self):
        return self.context


def test_sampling_prompts_leave_room_for_the_answer_within_dpo_max_length(tok, items):
    ex = _long(load_examples(DATA)[0])
    full = _count(tok)(render_recommender(ex, items, 3))
    rec = Recommender(CountingStub(tok, context=8192), items, 3)
    (fit,) = rec.fit([ex], max_new_tokens=64, max_total_tokens=full)  # 64 over
    assert _count(tok)(rec.prompts([fit])[0]) <= full - 64
    (ctx,) = Recommender(CountingStub(tok, context=full), items, 3).fit([ex], 64)
    assert ctx.candidates == fit.candidates  # the model's context binds alike
    assert rec.fit([ex], 64, 10_000) == [ex]


def test_a_client_that_cannot_count_gets_the_examples_as_they_are(items):
    class Remote(LLMClient):
        def generate(self, prompts, n=1, **kw):
            return [["x"] * n for _ in prompts]

    ex = _long(load_examples(DATA)[0])
    assert Recommender(Remote(), items, 3).fit([ex], 64, 100) == [ex]


def test_sampler_rows_say_how_many_candidates_their_prompt_dropped(tok, items):
    ex = _long(load_examples(DATA)[0])
    full = _count(tok)(render_recommender(ex, items, 3))
    w = SamplerWorker(to_dict(LLMSpec()), DATA, top_k=3)
    w.client, w.model_path = CountingStub(tok, 8192), "stub"
    params = {"n": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 64, "seed": 0}
    (row,) = w.sample([ex.to_json()], "stub", {**params, "max_total_tokens": full})
    assert row["candidates_dropped"] > 0 and _count(tok)(row["prompt"]) <= full - 64
    (row,) = w.sample([ex.to_json()], "stub", params)  # no trainer limit: the whole prompt
    assert "candidates_dropped" not in row and _count(tok)(row["prompt"]) == full
