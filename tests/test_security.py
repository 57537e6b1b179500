"""Loading never unpickles, remote code stays off, and no secret reaches a file we write."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from reclaif.config import LLMSpec, dump_config, load_config

SOURCE = Path(__file__).resolve().parents[1] / "reclaif"


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            yield node, owner, name


@pytest.mark.parametrize("path", sorted(SOURCE.rglob("*.py")), ids=lambda p: str(p.relative_to(SOURCE)))
def test_source_never_unpickles_or_trusts_remote_code(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node, owner, name in _calls(tree):
        where = f"{path.name}:{node.lineno}"
        assert not (owner in ("pickle", "cloudpickle", "dill", "joblib") and name in ("load", "loads")), where
        is_builtin = isinstance(node.func, ast.Name)
        assert not (is_builtin and name in ("eval", "exec")), f"{where}: eval/exec of text"
        if owner == "torch" and name == "load":
            kw = {k.arg: k.value for k in node.keywords}
            assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                f"{where}: torch.load without weights_only=True"
        for k in node.keywords:
            if k.arg == "trust_remote_code":
                assert not (isinstance(k.value, ast.Constant) and k.value.value is True), \
                    f"{where}: trust_remote_code=True hard-coded"
            if k.arg == "use_safetensors":
                assert not (isinstance(k.value, ast.Constant) and k.value.value is False), where


def test_trust_remote_code_is_off_by_default():
    assert LLMSpec().trust_remote_code is False
    cfg = load_config(None)
    assert not any(s.trust_remote_code for s in
                   (cfg.recommender, cfg.teacher.llm, cfg.judge.llm, cfg.explainability.llm))


def test_config_holds_the_name_of_a_key_never_the_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value-123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value-456")
    text = dump_config(load_config(None, ["judge.kind=llm", "judge.llm.backend=openai_compat"]))
    assert "OPENAI_API_KEY" in text
    assert "sk-secret-value-123" not in text and "aws-secret-value-456" not in text
