"""N answers per prompt (sampling.num_samples > 2): the judge's ranking (the rubric by its
scores with ties kept as ties; the LLM judge by pairwise verdicts in both orders, all pairs up
to four answers and a tournament above), the group rows the judge worker writes, the group
records (groups.jsonl) and their pairs, and what the audit and the report say of them. Real
LastFM sample prompts and the offline teacher's answers; scripted LLM clients."""
from __future__ import annotations

import json
import re

import pytest

from reclaif.bench.peer import reordered
from reclaif.config import JudgeConfig
from reclaif.config_load import to_dict
from reclaif.data import load_examples, load_items
from reclaif.distributed.workers import JudgeWorker
from reclaif.judge import LLMJudge, RubricJudge
from reclaif.judge.audit import audit, format_report
from reclaif.judge.ranking import Ranking
from reclaif.llm.base import LLMClient
from reclaif.pipeline.answer_groups import answer_group, write_groups
from reclaif.pipeline.judge_table import judge_tables
from reclaif.records import AnswerGroup, PreferencePair

TOP_K = 3


class ConstantDiversity:
    def score(self, item_ids):
        return 0.5


@pytest.fixture(scope="module")
def sample():
    examples, items = load_examples("sample"), load_items("sample")
    return examples, items, {e.id: e for e in examples}


def teacher_answers(sample, k: int = 0) -> tuple[str, str]:
    """(the offline teacher's answer, which puts the label first; its ranking reversed)."""
    from reclaif.teacher import OfflineTeacher

    examples, items, _ = sample
    good = OfflineTeacher(items, TOP_K).respond(examples[k])
    return good, reordered(good, (2, 1, 0))


# ---------------------------------------------------------------- rankings

def test_the_rubric_ranks_by_its_scores_and_keeps_ties_as_ties(sample):
    examples, items, _ = sample
    good, reversed_ = teacher_answers(sample)
    same = good + "\n"  # another text, the same parse and scores: a tie with the top
    judge = RubricJudge(items, TOP_K, diversity=ConstantDiversity())
    (r,) = judge.rank_many([examples[0]], [["no answer", reversed_, good, same]])
    assert (r.top, r.tied, r.beaten) == (2, [3], [1, 0])  # valid and reversed before invalid
    assert r.verdict_against(3).choice == "tie" and r.verdict_against(0).choice == "a"
    assert [(c.a, c.b) for c in r.comparisons] == [(2, 3), (2, 1), (2, 0)]  # best first
    assert judge.stats()["verdicts"] == 3 and judge.stats()["ties"] == 1
    assert Ranking.from_json(json.loads(json.dumps(r.to_json()))) == r


class LongerWins(LLMClient):
    """A judge model that prefers the longer option text (so it agrees with itself in both
    orders), or always says A (`biased`); records every generate call."""

    def __init__(self, biased: bool = False) -> None:
        self.biased, self.calls = biased, []

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=256, seed=0):
        self.calls.append(len(prompts))
        return [[self.answer(p)] for p in prompts]

    def answer(self, prompt: str) -> str:
        a, b = (re.search(rf"<<<DATA {name}\n(.*?)\nDATA>>>", prompt, re.S).group(1)
                for name in ("option_a", "option_b"))
        choice = "A" if self.biased or len(a) > len(b) else "B"
        return f"Relevance Score: 3\n**Decision:**\n- Chosen Option: {choice}"


def answers_by_length(n: int) -> list[str]:
    """n answers of different lengths, the longest at index 1."""
    lengths = [3, 20] + list(range(4, 4 + n - 2))
    return [f"1. {'x' * k}" for k in lengths]


def test_the_llm_judge_compares_all_pairs_of_four_in_both_orders_in_one_call(sample):
    examples, items, _ = sample
    client = LongerWins()
    judge = LLMJudge(client, items, TOP_K)
    (r,) = judge.rank_many([examples[0]], [answers_by_length(4)])
    assert client.calls == [12]  # 6 pairs, each asked as (A, B) and (B, A)
    assert r.top == 1 and r.beaten == [3, 2, 0] and r.tied == []  # best first: 3 beat 2 beat 0
    assert len(r.comparisons) == 6 and judge.stats()["inconsistent"] == 0
    assert [o.failed for o in judge.last_outcomes] == [False]  # one outcome per group


def test_position_disagreements_are_counted_and_leave_no_winner(sample):
    examples, items, _ = sample
    judge = LLMJudge(LongerWins(biased=True), items, TOP_K)
    (r,) = judge.rank_many([examples[0]], [answers_by_length(3)])
    assert r.beaten == [] and sorted(r.tied) == [1, 2]  # no decided verdict: nothing to train
    assert judge.stats()["inconsistent"] == 3  # every comparison, as for pairs


@pytest.mark.parametrize("n", [5, 8])
def test_above_four_answers_a_tournament_finds_the_top_in_fewer_comparisons(sample, n):
    examples, items, _ = sample
    client = LongerWins()
    judge = LLMJudge(client, items, TOP_K)
    (r,) = judge.rank_many([examples[0]], [answers_by_length(n)])
    assert r.top == 1 and sorted(r.beaten) == [j for j in range(n) if j != 1]
    met = [c for c in r.comparisons if 1 in (c.a, c.b)]
    assert len(met) == n - 1  # the top met every other answer once
    assert len(r.comparisons) <= 2 * n - 2 < n * (n - 1) // 2
    assert sum(client.calls) == 2 * len(r.comparisons)  # every comparison in both orders


# ---------------------------------------------------------------- group rows and records

@pytest.fixture(scope="module")
def worker() -> JudgeWorker:
    return JudgeWorker(to_dict(JudgeConfig()), "sample", top_k=TOP_K)  # the rubric judge


@pytest.fixture(scope="module")
def judged(sample, worker):
    """group_row(truncated) for the flags the tests use, each judged once."""
    return {flags: group_row(sample, worker, list(flags) if flags else None)
            for flags in (None, (True, False, False, False), (True, False, True, False))}


def group_row(sample, worker, truncated=None) -> dict:
    """A judge worker's group row for four answers, judged by the rubric."""
    examples, items, _ = sample
    good, reversed_ = teacher_answers(sample)
    answers = ["no answer", reversed_, good, good + "\n"]
    row = {"example_id": examples[0].id, "prompt": "the prompt", "answers": answers,
           "example": examples[0].to_json(), "token_ids": [[1], [2], [3], [4]],
           "logps": [-1.0, -2.0, -3.0, -4.0], "sampled_by": {"model": "m", "dtype": "float32"}}
    if truncated is not None:
        row["truncated"] = truncated
    return worker.judge_rows([row])[0]


def test_the_judge_worker_writes_a_ranked_group_row_with_every_answers_samples(judged):
    row = judged[(True, False, False, False)]
    assert set(row) == {"example_id", "prompt", "answers", "ranking", "truncated", "token_ids",
                        "logps", "sampled_by"}
    assert row["ranking"]["top"] == 2 and row["ranking"]["tied"] == [3]
    assert row["token_ids"] == [[1], [2], [3], [4]]  # all N, not the first two


def test_a_group_record_holds_the_top_and_every_answer_it_beat(judged):
    row = judged[(True, False, False, False)]
    group, capped = answer_group(row)
    assert capped == 0 and group.chosen == row["answers"][2]
    assert group.rejected == [row["answers"][1], row["answers"][0]]  # the tie is left out
    assert (group.chosen_ids, group.rejected_ids) == ([3], [[2], [1]])
    assert (group.chosen_logp, group.rejected_logps) == (-3.0, [-2.0, -1.0])
    assert group.rejected_truncated == [False, True] and not group.chosen_truncated
    assert [v["choice"] for v in group.verdicts] == ["a", "a"]
    assert AnswerGroup.from_json(json.loads(json.dumps(group.to_json()))) == group
    pairs = group.pairs()  # what pairs.jsonl holds: the top against each
    assert [(p.chosen, p.rejected, p.rejected_logp) for p in pairs] == [
        (group.chosen, r, lp) for r, lp in zip(group.rejected, group.rejected_logps)]


def test_a_capped_top_drops_the_finished_answers_it_beat_and_old_rows_read_as_finished(judged):
    group, capped = answer_group(judged[(True, False, True, False)])
    assert capped == 1 and group.rejected_truncated == [True]  # the capped rejected stays
    group, capped = answer_group(judged[None])  # no flags: a sample file from before them
    assert capped == 0 and len(group.rejected) == 2 and group.rejected_truncated == [False] * 2


def test_a_pair_read_as_a_group_of_two_keeps_everything_it_carries():
    p = PreferencePair("e", "p", "c", "r", {"choice": "b"}, True, False, [1, 2], [3],
                       -1.5, -2.5, {"model": "m", "dtype": "float32"})
    g = AnswerGroup.from_pair(p)
    assert g.pairs() == [p]


# ---------------------------------------------------------------- audit and report

def test_the_audit_counts_comparisons_group_sizes_ties_and_the_top_with_the_label_first(
        sample, judged, tmp_path):
    examples, items, by_id = sample
    rows = [judged[None], {"example_id": "x", "failed": True}]
    res = audit(rows, by_id, items, TOP_K)
    assert res["verdicts"] == 3 and res["failed_rows"] == 1  # the group's comparisons
    assert res["choices"] == {"a": 2, "b": 0, "tie": 1}
    g = res["groups"]
    assert (g["groups"], g["answers"], g["sizes"], g["no_winner"]) == (1, {"4": 1}, {"3": 1}, 0)
    assert (g["left_out"], g["others"]) == (1, 3)
    # the top is the teacher's answer (label first); so is its tie; reversed and invalid not
    t = g["top_label_first"]
    assert (t["rate"], t["any_answer"], t["per_answer"]) == (1.0, 1.0, 0.5)
    text = format_report(res)
    assert "top has label first:  1.000" in text and "kept sizes 3: 1" in text

    stats = tmp_path / "run" / "iter-001" / "judge_stats.json"
    groups, written = write_groups(rows, by_id, items, TOP_K, stats.with_name("groups.jsonl"),
                                   stats.with_name("pairs.jsonl"), stats)
    assert written["groups_kept"] == 1 and written["pairs_kept"] == 2 and written["failed"] == 1
    assert len(stats.with_name("pairs.jsonl").read_text().splitlines()) == 2
    tables = judge_tables(tmp_path / "run", lambda f: json.loads(f.read_text()))
    assert [t[0] for t in tables] == ["Judge", "Answer groups"]
    assert tables[1][2] == [["iter-001", "1", "4", "1", "3: 1", "1 of 3", "100.0%", "100.0%",
                             "50.0%"]]


def test_pair_rows_get_no_group_table(tmp_path):
    stats = tmp_path / "iter-001" / "judge_stats.json"
    stats.parent.mkdir()
    stats.write_text(json.dumps({"judged": 4, "pairs_kept": 2}))
    assert [t[0] for t in judge_tables(tmp_path, lambda f: json.loads(f.read_text()))] == ["Judge"]
