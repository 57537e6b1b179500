"""Loading never unpickles, remote code stays off, and no secret reaches a file we write."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from reclaif.config import LLMSpec
from reclaif.config_load import dump_config, load_config

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


# ------------------------------------------------------------------ secrets never in logs
FAKE_KEY_ID = "AKIAZZZZFAKEKEYID123"
FAKE_SECRET = "fake/secret+access/key0000000000000000000"
FAKE_TOKEN = "FwoGZXIvYXdzEFAKEsessionTOKENvalue0123456789abcdef"
FAKE_API_KEY = "sk-fake-openai-key-0123456789"


def _aws_env(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", FAKE_TOKEN)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _no_secret(text: str) -> None:
    for secret in (FAKE_KEY_ID, FAKE_SECRET, FAKE_TOKEN, FAKE_API_KEY):
        assert secret not in text, secret


_STUBBED_CLI = """
import sys
import boto3
from botocore.stub import Stubber
from reclaif.llm.bedrock import BedrockClient

TOKEN, KEY_ID = sys.argv[1], sys.argv[2]
answer = ("**Key Preferences:**\\n- rock\\n\\n**Recommended Artists/Bands:**\\n"
          "1. x: r\\n2. y: r\\n3. z: r")

def stubbed(self):
    client = boto3.session.Session().client("bedrock-runtime", region_name="us-east-1")
    stub = Stubber(client)
    stub.add_client_error("converse", "ThrottlingException",
                          f"slow down, token {TOKEN} key {KEY_ID}", 429)
    stub.add_response("converse", {
        "output": {"message": {"role": "assistant", "content": [{"text": answer}]}},
        "stopReason": "end_turn", "usage": {"inputTokens": 1, "outputTokens": 1,
                                            "totalTokens": 2}, "metrics": {"latencyMs": 1}})
    stub.activate()
    return client

BedrockClient._make_boto_client = stubbed
from reclaif.cli import main
sys.exit(main(["-v", "recommend", "--backend", "bedrock", "--history", "a; b",
               "--candidates", "x; y; z"]))
"""


def test_bedrock_under_stubber_with_verbose_logs_no_secret(tmp_path):
    """`reclaif -v recommend --backend bedrock` over a real boto client under botocore's
    Stubber, whose first answer is a throttling error echoing the session token and key id
    (the project's retry warning prints the error): the output holds neither."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "AWS_ACCESS_KEY_ID": FAKE_KEY_ID, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
           "AWS_SESSION_TOKEN": FAKE_TOKEN,
           "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    env.pop("AWS_PROFILE", None)
    p = subprocess.run([sys.executable, "-c", _STUBBED_CLI, FAKE_TOKEN, FAKE_KEY_ID], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "retry 1/5" in p.stderr and "1. x" in p.stdout
    _no_secret(p.stdout + p.stderr)


def _converse_server():
    import json as _json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = _json.dumps({
                "output": {"message": {"role": "assistant", "content": [{"text": (
                    "**Key Preferences:**\n- rock\n\n**Recommended Artists/Bands:**\n"
                    "1. x: r\n2. y: r\n3. z: r\n\x1b]0;pwned\x07\x1b[2J")}]}},
                "stopReason": "end_turn", "usage": {"inputTokens": 1, "outputTokens": 1,
                                                    "totalTokens": 2},
                "metrics": {"latencyMs": 1}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def test_reclaif_verbose_against_a_signed_bedrock_request_prints_no_secret(tmp_path):
    """`reclaif -v recommend --backend bedrock` against a loopback Converse endpoint: botocore
    signs a real request (its debug lines hold the canonical request and token header)."""
    import os
    import subprocess
    import sys
    import threading

    srv = _converse_server()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": FAKE_KEY_ID, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
               "AWS_SESSION_TOKEN": FAKE_TOKEN, "OPENAI_API_KEY": FAKE_API_KEY,
               "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": f"http://127.0.0.1:{srv.server_address[1]}",
               "AWS_CONFIG_FILE": str(tmp_path / "none"),
               "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
        env.pop("AWS_PROFILE", None)
        p = subprocess.run([sys.executable, "-m", "reclaif.cli", "-v", "recommend", "--backend",
                            "bedrock", "--history", "a; b", "--candidates", "x; y; z"],
                           env=env, capture_output=True, text=True, timeout=120)
    finally:
        srv.shutdown()
        srv.server_close()
    assert p.returncode == 0, p.stderr[-2000:]
    assert "1. x" in p.stdout
    _no_secret(p.stdout + p.stderr)


def test_redact_masks_headers_key_ids_and_secret_environment_values(monkeypatch):
    from reclaif.logs import redact

    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-0123456789")
    text = redact("Authorization: Bearer sk-abc 'X-Amz-Security-Token': 'abc/def' "
                  "AKIAABCDEFGHIJKLMNOP tok-0123456789 plain words")
    assert "sk-abc" not in text and "abc/def" not in text and "AKIAABCD" not in text
    assert "tok-0123456789" not in text and "plain words" in text


def test_user_errors_are_one_line_and_show_a_traceback_only_with_verbose(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    for verbose, want in (([], False), (["-v"], True)):
        p = subprocess.run([sys.executable, "-m", "reclaif.cli", *verbose, "plan", "--config",
                            str(bad), "--gpus", "8"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, p.stderr[-2000:]
        lines = [x for x in p.stderr.splitlines() if x.startswith("reclaif: error:")]
        assert lines == [f"reclaif: error: {bad}: not UTF-8 text (byte 0xe9 at offset 9); save "
                         "the file as UTF-8"], p.stderr
        assert ("Traceback" in p.stderr) is want
