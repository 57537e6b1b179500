"""The panel: majority vote of its members, ties when split, Cohen's kappa between members."""
from __future__ import annotations

import random

import pytest
from sklearn.metrics import cohen_kappa_score

from reclaif.config import JudgeConfig
from reclaif.data import lastfm
from reclaif.judge import LLMJudge, PanelJudge, RubricJudge, cohen_kappa, make_judge
from reclaif.judge.base import Judge
from reclaif.judge.panel import majority
from reclaif.llm.base import LLMClient
from reclaif.records import Scores, Verdict
from reclaif.teacher import OfflineTeacher

TOP_K = 3


class FixedJudge(Judge):
    """A judge that answers a scripted list of choices, one per verdict."""

    def __init__(self, choices):
        self.choices = list(choices)

    def compare_many(self, examples, pairs):
        out = []
        for _ in examples:
            c = self.choices.pop(0)
            out.append(Verdict(Scores(2, 2, 2), Scores(4, 4, 4), c, f"fixed {c}",
                               consistent=c != "tie"))
        return out


class TagJaccardDiversity:
    """A light diversity (1 - mean tag Jaccard) so this file loads no embedder."""

    def __init__(self, items):
        self.items = items

    def score(self, ids):
        tags = [set(self.items[i].fields.get("tags", "").split(", ")) for i in ids]
        pairs = [(x, y) for n, x in enumerate(tags) for y in tags[n + 1:]]
        return 1 - sum(len(x & y) / max(1, len(x | y)) for x, y in pairs) / len(pairs)


class PositionAClient(LLMClient):
    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=256, seed=0):
        return [["**Option A Evaluation:**\n- Relevance Score: 5\n**Decision:**\n"
                 "- Chosen Option: A"] for _ in prompts]


@pytest.fixture(scope="module")
def data(real_data):
    return lastfm.load(real_data / "lastfm" / "sdpo" / "lastfm-val.json", limit=6)


@pytest.mark.parametrize("votes,winner", [
    (["a", "a", "b"], "a"), (["b", "tie", "b"], "b"), (["a", "b", "tie"], "tie"),
    (["a", "b"], "tie"), (["tie", "tie", "a"], "tie"), (["a", "a"], "a"),
])
def test_majority_vote_and_split_is_a_tie(votes, winner):
    assert majority(votes) == winner


def test_cohen_kappa_matches_scikit_learn_on_random_labels():
    rng = random.Random(0)
    for _ in range(20):
        x = [rng.choice("ab") if rng.random() < 0.8 else "tie" for _ in range(40)]
        y = [v if rng.random() < 0.6 else rng.choice(["a", "b", "tie"]) for v in x]
        assert cohen_kappa(x, y) == pytest.approx(cohen_kappa_score(x, y))


def test_cohen_kappa_edge_cases():
    assert cohen_kappa(["a", "a"], ["a", "a"]) == 1.0   # sklearn gives NaN here
    assert cohen_kappa(["a", "b", "a", "b"], ["b", "a", "b", "a"]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        cohen_kappa(["a"], ["a", "b"])


def test_panel_votes_and_reports_agreement(data):
    exs = data.examples[:4]
    pairs = [("x", "y")] * 4
    panel = PanelJudge([FixedJudge(["a", "b", "a", "a"]),
                        FixedJudge(["a", "b", "b", "tie"]),
                        FixedJudge(["a", "b", "tie", "tie"])], names=["one", "two", "three"])
    verdicts = panel.compare_many(exs, pairs)
    assert [v.choice for v in verdicts] == ["a", "b", "tie", "tie"]
    assert verdicts[0].scores_a == Scores(2, 2, 2) and verdicts[0].scores_b == Scores(4, 4, 4)
    assert '"one": {"choice": "a"' in verdicts[0].raw_text
    assert not verdicts[3].consistent and verdicts[1].consistent
    agreement = panel.agreement()
    assert agreement["n"] == 4
    assert agreement["kappa"]["two~three"] == pytest.approx(
        cohen_kappa_score(["a", "b", "b", "tie"], ["a", "b", "tie", "tie"]))
    assert set(agreement["kappa"]) == {"one~two", "one~three", "two~three"}


def test_panel_from_config_mixes_rubric_and_llm_members(data):
    teacher = OfflineTeacher(data.items, TOP_K)
    exs = data.examples[:4]
    pairs = []
    for ex in exs:
        good = teacher.respond(ex)
        target = data.items[next(iter(ex.relevant()))].title
        other = next(data.items[c].title for c in ex.candidates if data.items[c].title not in good)
        pairs.append((good, good.replace(target, other)))
    cfg = JudgeConfig(kind="panel", panel=["rubric", "llm", "rubric"])
    panel = make_judge(cfg, data.items, TOP_K, client_factory=lambda spec: PositionAClient())
    assert isinstance(panel.judges[1], LLMJudge) and isinstance(panel.judges[0], RubricJudge)
    for j in (panel.judges[0], panel.judges[2]):
        j._diversity = TagJaccardDiversity(data.items)
    verdicts = panel.compare_many(exs, pairs)
    # Both rubric members pick the answer with the target; the position-biased LLM ties.
    assert [v.choice for v in verdicts] == ["a"] * 4
    kappa = panel.agreement()["kappa"]
    assert kappa["rubric#0~rubric#2"] == 1.0 and kappa["rubric#0~llm#1"] == 0.0
    assert panel.stats()["members"]["llm#1"]["disagreement_rate"] == 1.0


def test_a_panel_needs_two_members(data):
    with pytest.raises(ValueError, match="judge.panel"):
        PanelJudge([FixedJudge(["a"])])
