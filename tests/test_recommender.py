"""Recommender: the real renderer and parser joined to a client; `reclaif recommend` end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from reclaif.cli import main
from reclaif.data import load_examples, load_items
from reclaif.errors import ReclaifError
from reclaif.llm.base import LLMClient
from reclaif.llm.models import build_tiny_model
from reclaif.prompts import render_recommender
from reclaif.recommender import Recommender

CANDIDATES = "The Horrors; Hannah Montana; Band of Skulls"


class ScriptedClient(LLMClient):
    """An LLMClient that answers from a script and records what it was asked."""

    def __init__(self, answers: list[str]):
        self.answers = answers
        self.calls: list[dict] = []

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=256, seed=0):
        self.calls.append(dict(prompts=prompts, n=n, temperature=temperature, top_p=top_p,
                               max_new_tokens=max_new_tokens, seed=seed))
        return [[self.answers[(i * n + j) % len(self.answers)] for j in range(n)]
                for i in range(len(prompts))]


@pytest.fixture(scope="module")
def sample():
    return load_examples("sample")[:2], load_items("sample")


def _answer(example, items, k: int) -> str:
    names = [items[c].title for c in example.candidates[:k]]
    lines = ["**Key Preferences:**", "- Preference 1: dark synth-pop", "",
             "**Recommended Artists/Bands (from most to least likely):**"]
    lines += [f"{i}. {name} - fits the history" for i, name in enumerate(names, 1)]
    return "\n".join(lines)


def test_prompts_are_the_shared_renderer(sample):
    examples, items = sample
    rec = Recommender(ScriptedClient(["x"]), items, top_k=3)
    assert rec.prompts(examples) == [render_recommender(e, items, 3) for e in examples]


def test_recommend_parses_n_answers_per_example_and_passes_sampling(sample):
    examples, items = sample
    answers = [_answer(examples[0], items, 3), "I cannot help with that."]
    client = ScriptedClient(answers)
    out = Recommender(client, items, top_k=3).recommend(
        examples[:1], n=2, temperature=0.9, top_p=0.8, max_new_tokens=77, seed=3)
    assert len(out) == 1 and len(out[0]) == 2
    good, bad = out[0]
    assert good.valid and good.items == examples[0].candidates[:3]
    assert good.key_features and len(good.reasons) == 3
    assert not bad.valid and bad.raw_text == "I cannot help with that."
    call = client.calls[0]
    assert (call["n"], call["temperature"], call["top_p"], call["max_new_tokens"],
            call["seed"]) == (2, 0.9, 0.8, 77, 3)


def test_recommend_with_no_examples_asks_nothing(sample):
    client = ScriptedClient(["x"])
    assert Recommender(client, sample[1], top_k=3).recommend([]) == []
    assert client.calls == []


def test_wrong_answer_count_is_an_error(sample):
    class Short(ScriptedClient):
        def generate(self, prompts, **kw):
            return []

    with pytest.raises(ReclaifError, match="0 answer lists for 2 prompts"):
        Recommender(Short([]), sample[1], top_k=3).recommend(sample[0])


def test_cli_recommend_with_any_checkpoint_dir(tmp_path: Path, capsys):
    ckpt = build_tiny_model(tmp_path / "iter-002" / "checkpoint", tie=False)
    capsys.readouterr()  # what building the model printed (DeepSpeed's import) is not the CLI's
    rc = main(["recommend", "--model", str(ckpt), "--history", "Depeche Mode; No Doubt",
               "--candidates", CANDIDATES, "--max-new-tokens", "8", "--json"])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)
    assert set(rec) == {"key_features", "items", "reasons", "valid", "raw_text"}
    assert rec["raw_text"]  # the random model says something; it is not a valid answer
    assert set(rec["items"]) <= {"The Horrors", "Hannah Montana", "Band of Skulls"}


def test_cli_recommend_needs_history_or_query(capsys):
    assert main(["recommend", "--model", "default", "--candidates", CANDIDATES]) == 2
    assert "--history" in capsys.readouterr().err


def test_cli_recommend_bad_checkpoint_dir_is_one_line_error(tmp_path: Path, capsys):
    (tmp_path / "ckpt").mkdir()
    rc = main(["recommend", "--model", str(tmp_path / "ckpt"), "--query", "red lipstick",
               "--domain", "beauty", "--candidates", "a; b"])
    assert rc == 2
    assert "no config.json" in capsys.readouterr().err


def test_cli_recommend_default_model_end_to_end(capsys):
    """The embedded default model, exactly as a user types it."""
    rc = main(["recommend", "--model", "default", "--history", "Depeche Mode; No Doubt",
               "--candidates", CANDIDATES, "--max-new-tokens", "96", "--json"])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["raw_text"].strip()
    assert set(rec["items"]) <= {"The Horrors", "Hannah Montana", "Band of Skulls"}
    assert len(rec["items"]) == len(rec["reasons"]) <= 3


def test_recommend_reaches_an_openai_compatible_endpoint_and_prints_no_escapes(capsys):
    """`reclaif recommend --backend openai_compat --base-url URL` against a loopback server
    whose answer carries CSI, OSC (a terminal retitle and a hyperlink) and C1 escapes."""
    import sys as _sys
    from pathlib import Path as _Path

    _sys.path.insert(0, str(_Path(__file__).parent))
    from llm_server import chat_body, serve

    from reclaif.cli import main

    evil = ("**Key Preferences:**\n- rock\x1b[2J\n\n**Recommended Artists/Bands:**\n"
            "1. x: \x1b]0;pwned\x07fine\n2. y: \x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\\n"
            "3. z: \x9b31mred\x07")
    with serve(lambda body: (200, {}, chat_body([evil]))) as server:
        for extra in ([], ["--json"]):
            assert main(["recommend", "--backend", "openai_compat", "--base-url", server.url,
                         "--model", "m", "--history", "a; b", "--candidates", "x; y; z",
                         *extra]) == 0
            out = capsys.readouterr().out
            assert not set(out) & {"\x1b", "\x07", "\x9b"}, repr(out)
            assert "x" in out and "pwned" not in out or extra
        assert server.requests[0][0] == "/v1/chat/completions"


def test_a_prompt_over_the_models_context_is_refused_before_generating(tmp_path: Path, capsys):
    import time

    ckpt = build_tiny_model(tmp_path / "ckpt", tie=False)  # 2,048 positions
    capsys.readouterr()
    many = "; ".join(f"Artist number {i}" for i in range(2_000))
    t0 = time.monotonic()
    rc = main(["recommend", "--model", str(ckpt), "--history", "Depeche Mode; No Doubt",
               "--candidates", many, "--max-new-tokens", "8"])
    err = capsys.readouterr().err
    assert rc == 2 and "over the model's 2,048-token context" in err
    assert "give fewer candidates (2,000 now)" in err and time.monotonic() - t0 < 60
