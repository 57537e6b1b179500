"""Capped answers (stopped at max_new_tokens) are never trained as finished: the sampler flags
them, the flag travels samples → verdicts → pairs, a capped answer is encoded without the end of
turn it never emitted, and a capped answer chosen over a finished one drops its pair."""
from __future__ import annotations

import json

import pytest

from reclaif.config import JudgeConfig, LLMSpec
from reclaif.config_load import to_dict
from reclaif.data import load_examples
from reclaif.distributed.workers import JudgeWorker, SamplerWorker
from reclaif.judge.base import preference_pair
from reclaif.llm.base import Completion, LLMClient
from reclaif.llm.models import default_model_dir, load_tokenizer
from reclaif.llm.openai_compat import OpenAICompatClient
from reclaif.records import PreferencePair, Verdict
from reclaif.train.data import encode_pairs
from tests.llm_server import serve

DATA = "sample"


class StubSampler(LLMClient):
    """No model: answer j of each prompt is 'answer j', capped where j is in `capped`."""

    def __init__(self, capped: set[int]) -> None:
        self.capped = capped

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=256, seed=0):
        return [[c.text for c in row] for row in self.sample(prompts, n)]

    def sample(self, prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=256, seed=0):
        return [[Completion(f"answer {j}", truncated=j in self.capped) for j in range(n)]
                for _ in prompts]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(str(default_model_dir()))


def _sampler(capped: set[int]) -> SamplerWorker:
    w = SamplerWorker(to_dict(LLMSpec()), DATA, top_k=3)
    w.client, w.model_path = StubSampler(capped), "stub"  # _ensure keeps a client it has
    return w


PARAMS = {"n": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "seed": 0}


def test_sample_rows_carry_each_answers_truncation():
    ex = load_examples(DATA)[:2]
    rows = _sampler({1}).sample([e.to_json() for e in ex], "stub", PARAMS)
    assert [r["truncated"] for r in rows] == [[False, True], [False, True]]
    assert rows[0]["answers"] == ["answer 0", "answer 1"]


def test_a_backend_that_cannot_tell_says_none():
    class TextOnly(LLMClient):
        def generate(self, prompts, n=1, **kw):
            return [["x"] * n for _ in prompts]

    assert TextOnly().sample(["p"], n=2) == [[Completion("x"), Completion("x")]]
    assert Completion("x").truncated is None


def test_verdict_rows_pass_the_flags_on_and_old_sample_rows_still_judge():
    ex = load_examples(DATA)[:2]
    rows = _sampler({0}).sample([e.to_json() for e in ex], "stub", PARAMS)
    judge = JudgeWorker(to_dict(JudgeConfig()), DATA, top_k=3)
    new = [{**r, "example": e.to_json()} for r, e in zip(rows, ex)]
    old = [{k: v for k, v in r.items() if k != "truncated"} for r in new]
    assert [v["truncated"] for v in judge.judge_rows(new)] == [[True, False]] * 2
    assert all("truncated" not in v for v in judge.judge_rows(old))


def _pair(choice: str, truncated) -> PreferencePair:
    ex = load_examples(DATA)[0]
    v = Verdict.from_json({"scores_a": {"relevance": 1, "diversity": 1, "explainability": 1},
                           "scores_b": {"relevance": 0, "diversity": 0, "explainability": 0},
                           "choice": choice, "raw_text": ""})
    return preference_pair(ex, "prompt", "1. A", "1. B", v).with_samples({"truncated": truncated})


def test_flags_follow_the_verdicts_choice_to_chosen_and_rejected():
    p = _pair("b", [True, False])  # a was capped and lost
    assert (p.chosen, p.chosen_truncated, p.rejected, p.rejected_truncated) == \
        ("1. B", False, "1. A", True)
    assert not _pair("a", None).chosen_truncated  # an old verdict row: nothing known
    back = PreferencePair.from_json(json.loads(json.dumps(p.to_json())))
    assert back == p
    old = {k: v for k, v in p.to_json().items() if not k.endswith("_truncated")}
    assert PreferencePair.from_json(old).rejected_truncated is False


def test_only_a_capped_answer_over_a_finished_one_is_dropped():
    assert _pair("a", [True, False]).capped_over_finished  # would teach running on
    assert not _pair("b", [True, False]).capped_over_finished  # the capped one lost: kept
    assert not _pair("a", [True, True]).capped_over_finished  # neither trains a stop
    assert not _pair("a", None).capped_over_finished


def test_a_capped_answer_is_encoded_without_an_end_of_turn(tok):
    p = _pair("b", [True, False])
    (e,) = encode_pairs(tok, [p], 4096)
    answer = {s: [t for t, m in zip(e[s]["input_ids"], e[s]["loss_mask"]) if m]
              for s in ("chosen", "rejected")}
    assert answer["chosen"][-1] == tok.eos_token_id  # ended by itself: its EOS is trained
    assert tok.eos_token_id not in answer["rejected"]
    assert tok.decode(answer["rejected"]) == "1. A"


def test_openai_compat_reads_finish_reason_length_as_truncated():
    def reply(body):
        choices = [{"index": 0, "message": {"content": "cut"}, "finish_reason": "length"},
                   {"index": 1, "message": {"content": "done"}, "finish_reason": "stop"}]
        return 200, {}, json.dumps({"choices": choices}).encode()

    with serve(reply) as s:
        c = OpenAICompatClient(LLMSpec(backend="openai_compat", base_url=s.url, model="m",
                                       api_key_env=""))
        out = c.sample(["p", "q"], n=2, temperature=1.0)
        assert out == [[Completion("cut", True), Completion("done", False)]] * 2
        assert c.generate(["p"], n=2) == [["cut", "done"]]
