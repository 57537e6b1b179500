"""The LLM judge: the paper's prompt, robust reading of its answers, position-swap control.

The clients here are real `LLMClient` implementations with scripted behaviour (no mocks of
internals), plus one end-to-end run through `make_client` with a tiny random-weight model."""
from __future__ import annotations

import re

import pytest

from reclaif.config import JudgeConfig, LLMSpec
from reclaif.data import lastfm
from reclaif.errors import ReclaifError
from reclaif.judge import LLMJudge, make_judge, parse_judgment, preference_pair
from reclaif.llm.base import LLMClient
from reclaif.teacher import OfflineTeacher

TOP_K = 3


def paper_answer(choice: str, rel=(4, 2), div=(3, 3), expl=(4, 3)) -> str:
    """An answer in the exact output format of the paper's judge prompt."""
    return (f"**Option A Evaluation:**\n- Relevance Score: {rel[0]} The ranking is close.\n"
            f"- Diversity Score: {div[0]} Varied.\n- Explainability Score: {expl[0]} Clear.\n\n"
            f"**Option B Evaluation:**\n- Relevance Score: {rel[1]} Misses the label.\n"
            f"- Diversity Score: {div[1]} Varied.\n- Explainability Score: {expl[1]} Vague.\n\n"
            f"**Decision:**\n- Chosen Option: {choice}\n- Reasoning: Option A is weaker on "
            f"some points but the choice is clear.")


class ScriptedClient(LLMClient):
    """An LLMClient whose answer is a function of the prompt; records every generate call."""

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=256, seed=0):
        self.calls.append({"prompts": list(prompts), "temperature": temperature, "n": n})
        return [[self.answer(p)] for p in prompts]


def fenced(prompt: str, name: str) -> str:
    m = re.search(rf"<<<DATA {name}\n(.*?)\nDATA>>>", prompt, re.S)
    assert m, f"prompt has no {name} fence"
    return m.group(1)


def label_reader(prompt: str) -> str:
    """A judge that reads the label: picks the option whose first recommendation is it."""
    label = fenced(prompt, "label").removeprefix("- ").strip()
    first = lambda text: re.search(r"^1\. (.*?) - ", text, re.M).group(1)  # noqa: E731
    return paper_answer("A" if first(fenced(prompt, "option_a")) == label else "B")


@pytest.fixture(scope="module")
def data(real_data):
    return lastfm.load(real_data / "lastfm" / "sdpo" / "lastfm-val.json", limit=6)


@pytest.fixture(scope="module")
def pairs(data):
    """(teacher answer, the same answer with the target swapped out) per example."""
    teacher = OfflineTeacher(data.items, TOP_K)
    out = []
    for ex in data.examples:
        good = teacher.respond(ex)
        target = data.items[next(iter(ex.relevant()))].title
        other = next(data.items[c].title for c in ex.candidates if data.items[c].title not in good)
        out.append((good, good.replace(target, other)))
    return out


def test_a_client_gets_the_protocols_defaults_for_what_it_does_not_override():
    # generate_settled: one batched generate while it succeeds; reload: refused, by name.
    client = ScriptedClient(lambda p: p.upper())
    settled = client.generate_settled(["a", "b"], seed=3)
    assert [s.answers for s in settled] == [["A"], ["B"]] and len(client.calls) == 1
    with pytest.raises(ReclaifError, match="ScriptedClient: cannot load new weights \\(ckpt\\)"):
        client.reload("ckpt")


def test_consistent_judge_keeps_its_choice_in_one_batched_call(data, pairs):
    client = ScriptedClient(label_reader)
    judge = LLMJudge(client, data.items, TOP_K)
    flipped = [(b, a) for a, b in pairs]
    verdicts = judge.compare_many(data.examples, pairs[:3] + flipped[3:])
    assert [v.choice for v in verdicts] == ["a"] * 3 + ["b"] * 3
    assert all(v.consistent for v in verdicts)
    assert len(client.calls) == 1 and len(client.calls[0]["prompts"]) == 2 * len(pairs)
    assert client.calls[0]["temperature"] == 0.0
    # The second half asks the same pairs with the answers swapped.
    p0, s0 = client.calls[0]["prompts"][0], client.calls[0]["prompts"][len(pairs)]
    assert fenced(p0, "option_a") == fenced(s0, "option_b")
    assert judge.stats()["disagreement_rate"] == 0.0


def test_judge_that_always_prefers_position_a_gives_only_inconsistent_ties(data, pairs):
    judge = LLMJudge(ScriptedClient(lambda p: paper_answer("A")), data.items, TOP_K)
    verdicts = judge.compare_many(data.examples, pairs)
    assert all(v.choice == "tie" and not v.consistent for v in verdicts)
    assert judge.stats()["disagreement_rate"] == 1.0 and judge.n_inconsistent == len(pairs)
    assert all(preference_pair(ex, "p", a, b, v) is None
               for ex, (a, b), v in zip(data.examples, pairs, verdicts))


def test_without_position_swap_the_bias_goes_through(data, pairs):
    cfg = JudgeConfig(kind="llm", position_swap=False)
    client = ScriptedClient(lambda p: paper_answer("A"))
    judge = make_judge(cfg, data.items, TOP_K, client_factory=lambda spec: client)
    assert [v.choice for v in judge.compare_many(data.examples, pairs)] == ["a"] * len(pairs)
    assert len(client.calls[0]["prompts"]) == len(pairs)


def test_scores_of_the_swapped_call_are_mapped_back_to_their_answers(data, pairs):
    # Forward: A (answer a) relevance 4, B 2. Swapped: A is answer b → 2, B is answer a → 5.
    def answer(prompt):
        forward = fenced(prompt, "option_a") == pairs[0][0]
        return paper_answer("A" if forward else "B", rel=(4, 2) if forward else (2, 5))
    v = LLMJudge(ScriptedClient(answer), data.items, TOP_K).compare(data.examples[0], *pairs[0])
    assert v.choice == "a" and v.consistent
    assert v.scores_a.relevance == 4.5 and v.scores_b.relevance == 2.0
    assert "position-swapped" in v.raw_text


def test_unparseable_answer_is_a_counted_tie_with_its_text_kept(data, pairs):
    judge = LLMJudge(ScriptedClient(lambda p: "As an AI I cannot compare music."), data.items,
                     TOP_K)
    v = judge.compare(data.examples[0], *pairs[0])
    assert v.choice == "tie" and v.consistent
    assert "As an AI I cannot compare music." in v.raw_text
    assert judge.stats()["unparseable"] == 1


def test_a_call_that_fails_for_good_costs_only_its_own_record(data, pairs):
    """A client without per-prompt results (a local one) fails its whole batch; the judge then
    asks each prompt alone, so only the record whose calls keep failing is lost, and counted."""
    from reclaif.errors import LLMError
    from reclaif.prompts import render_judge

    down = fenced(render_judge(data.examples[1], data.items, *pairs[1]), "history")

    def answer(prompt):
        if fenced(prompt, "history") == down:
            raise LLMError("endpoint: failed after 3 attempts: HTTP 500")
        return label_reader(prompt)

    judge = LLMJudge(ScriptedClient(answer), data.items, TOP_K)
    verdicts = judge.compare_many(data.examples[:3], pairs[:3])
    assert [o.failed for o in judge.last_outcomes] == [False, True, False]
    assert judge.last_outcomes[1].failed_calls == 2 and "HTTP 500" in judge.last_outcomes[1].error
    assert [v.choice for v in verdicts] == ["a", "tie", "a"]
    stats = judge.stats()
    assert stats["failed"] == 1 and stats["failed_calls"] == 2 and stats["unparseable"] == 0


def test_the_prompt_is_the_papers_with_the_label(data, pairs):
    client = ScriptedClient(label_reader)
    LLMJudge(client, data.items, TOP_K).compare(data.examples[0], *pairs[0])
    prompt = client.calls[0]["prompts"][0]
    target = data.items[next(iter(data.examples[0].relevant()))].title
    assert "Next Preferred Artist/Band" in prompt and target in fenced(prompt, "label")
    assert "Chosen Option: [A or B]" in prompt and "Relevance Score: [0-5]" in prompt


@pytest.mark.parametrize("text,choice,rel_a,rel_b", [
    (paper_answer("**B**"), "b", 4.0, 2.0),
    (paper_answer("B").lower(), "b", 4.0, 2.0),
    ("### Option A Evaluation\n* **Relevance Score:** 4/5 good\n* **Diversity Score:** 3/5\n"
     "* **Explainability Score:** 5/5\n### Option B Evaluation\n* **Relevance Score:** 2/5\n"
     "* **Diversity Score:** 4/5\n* **Explainability Score:** 3/5\n### Decision\n"
     "**Chosen Option: Option A**", "a", 4.0, 2.0),
    ("Option A Evaluation:\nRelevance Score (0-5): 8/10\nOption B Evaluation:\nRelevance: 1\n"
     "Final verdict: I prefer Option B because it names the label.", "b", 4.0, 1.0),
    ("Option A: relevance 3, diversity 3, explainability 3\nOption B: relevance 5, diversity 4, "
     "explainability 4\n", "b", 3.0, 5.0),   # no explicit choice: complete score totals decide
    ("The decision is a hard one; Option B is the better set overall.", "b", None, None),
    ("**Decision:**\n- Chosen Option: [A or B]\n- Reasoning: the decision is a close one", None,
     None, None),
    ("", None, None, None),
])
def test_parse_judgment_reads_the_usual_formats(text, choice, rel_a, rel_b):
    j = parse_judgment(text)
    assert j.choice == choice
    assert j.scores.get("a", {}).get("relevance") == rel_a
    assert j.scores.get("b", {}).get("relevance") == rel_b


def test_end_to_end_with_a_real_model_through_make_client(data, pairs, tmp_path):
    """A tiny random-weight Llama (the default model's tokenizer) writes garbage: the judge must
    read it without crashing, as ties, with the text kept."""
    from reclaif.llm.models import build_tiny_model

    tiny = build_tiny_model(tmp_path / "tiny")
    cfg = JudgeConfig(kind="llm", llm=LLMSpec(backend="hf", model=str(tiny), device="cpu",
                                              batch_size=4))
    judge = make_judge(cfg, data.items, TOP_K)
    judge.max_new_tokens = 12
    verdicts = judge.compare_many(data.examples[:2], pairs[:2])
    assert len(verdicts) == 2
    for v in verdicts:
        assert v.choice in ("a", "b", "tie") and v.raw_text
        assert v.choice == "tie" or v.consistent
    assert judge.stats()["verdicts"] == 2


@pytest.mark.parametrize("dataset", ["sample", "sample:beauty"])
def test_llm_judge_and_scorer_prompts_ask_for_reasons_linked_to_the_history(dataset):
    """Issue 31: the LLM judge and the 1-100 scorer ask what the rubric credits: key
    preferences named with the history items that show them, reasons linking each item to
    named history items by something true of both, little for a restated rank."""
    from reclaif.data import load_examples, load_items
    from reclaif.prompts import render_explainability, render_judge

    ex = load_examples(dataset, "valid")[0]
    items = load_items(dataset)
    answer = OfflineTeacher(items, 3).respond(ex)
    for prompt in (render_judge(ex, items, answer, answer), render_explainability(ex, items,
                                                                                  answer)):
        criteria = prompt.split("**Criteria for Evaluation:**")[1]
        assert re.search(r"named with the history (artists|products) that show it", criteria)
        assert "by something true of both" in criteria
        assert "only restates a rank or score" in criteria and "earns little" in criteria
        assert "untrue of the" in criteria and "earns nothing" in criteria
