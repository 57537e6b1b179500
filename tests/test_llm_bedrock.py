"""Bedrock client against botocore's Stubber: the real boto3 client, no network."""
from __future__ import annotations

import pytest
from botocore.stub import ANY, Stubber

from reclaif.config import LLMSpec
from reclaif.errors import LLMError
from reclaif.llm import make_client
from reclaif.llm.bedrock import DEFAULT_BEDROCK_MODEL, BedrockClient
from reclaif.llm.retry import Backoff

SECRET = "wJalrXUtnFEMI-K7MDENG-not-a-real-secret"


def _ok(text: str) -> dict:
    return {"output": {"message": {"role": "assistant", "content": [{"text": text}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 5, "outputTokens": 2, "totalTokens": 7},
            "metrics": {"latencyMs": 10}}


@pytest.fixture
def aws_env(monkeypatch):
    # Fake credentials from the standard chain (environment), so nothing probes IMDS.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _client(spec: LLMSpec, sleeps: list[float]) -> BedrockClient:
    return BedrockClient(spec, backoff=Backoff(max_retries=spec.max_retries, sleep=sleeps.append))


def test_request_shape_and_answers(aws_env):
    spec = LLMSpec(backend="bedrock", model="default", region="eu-west-1", max_concurrency=1)
    sleeps: list[float] = []
    client = _client(spec, sleeps)
    expected = {"modelId": DEFAULT_BEDROCK_MODEL,
                "messages": [{"role": "user", "content": [{"text": "recommend"}]}],
                "inferenceConfig": {"temperature": 0.7, "topP": 0.9, "maxTokens": 33}}
    with Stubber(client.client) as stub:
        stub.add_response("converse", _ok("one"), expected)
        stub.add_response("converse", _ok("two"), expected)
        out = client.generate(["recommend"], n=2, temperature=0.7, top_p=0.9, max_new_tokens=33)
        stub.assert_no_pending_responses()
    assert out == [["one", "two"]]
    assert client.client.meta.region_name == "eu-west-1"
    assert sleeps == []


def test_botocore_makes_one_attempt_ours_are_the_only_retries(aws_env):
    spec = LLMSpec(backend="bedrock", model="anthropic.claude-3-haiku-20240307-v1:0",
                   max_retries=7, timeout_s=12.5)
    client = make_client(spec)
    cfg = client.client.meta.config
    assert cfg.retries == {"mode": "standard", "total_max_attempts": 1}
    assert client.backoff.max_retries == 7
    assert (cfg.connect_timeout, cfg.read_timeout) == (12.5, 12.5)
    assert client.model_id == "anthropic.claude-3-haiku-20240307-v1:0"


def test_throttling_then_success_retries_with_backoff(aws_env):
    spec = LLMSpec(backend="bedrock", max_retries=3, max_concurrency=1)
    sleeps: list[float] = []
    client = _client(spec, sleeps)
    with Stubber(client.client) as stub:
        stub.add_client_error("converse", "ThrottlingException", "Rate exceeded", 429)
        stub.add_client_error("converse", "ServiceUnavailableException", "busy", 503)
        stub.add_response("converse", _ok("fine"), {"modelId": ANY, "messages": ANY,
                                                     "inferenceConfig": ANY})
        assert client.generate(["x"], n=1) == [["fine"]]
        stub.assert_no_pending_responses()
    assert len(sleeps) == 2


def test_throttling_until_retries_run_out_is_llm_error(aws_env):
    spec = LLMSpec(backend="bedrock", max_retries=2, max_concurrency=1)
    sleeps: list[float] = []
    client = _client(spec, sleeps)
    with Stubber(client.client) as stub:
        for _ in range(3):
            stub.add_client_error("converse", "ThrottlingException", "Rate exceeded", 429)
        with pytest.raises(LLMError, match="after 3 attempts"):
            client.generate(["x"])
    assert len(sleeps) == 2


def test_validation_error_is_final_names_model_and_hides_credentials(aws_env):
    spec = LLMSpec(backend="bedrock", model="anthropic.claude-v9", max_retries=5)
    sleeps: list[float] = []
    client = _client(spec, sleeps)
    with Stubber(client.client) as stub:
        stub.add_client_error("converse", "ValidationException", "model not supported", 400)
        with pytest.raises(LLMError, match="anthropic.claude-v9") as err:
            client.generate(["x"])
        stub.assert_no_pending_responses()
    assert sleeps == []  # no retry on a hard error
    assert SECRET not in str(err.value) and SECRET not in repr(client)
    assert "AKIAFAKE" not in repr(client)


def test_concurrent_samples_keep_prompt_order(aws_env):
    spec = LLMSpec(backend="bedrock", max_concurrency=4)
    client = _client(spec, [])

    class Echo:
        """Stands in for the boto client where call order is nondeterministic (threads)."""
        meta = client.client.meta

        def converse(self, **req):
            return _ok(req["messages"][0]["content"][0]["text"].upper())

    client.client = Echo()
    out = client.generate(["a", "b", "c"], n=3, temperature=1.0)
    assert out == [["A"] * 3, ["B"] * 3, ["C"] * 3]


def test_a_throttling_endpoint_sees_exactly_max_retries_plus_one_attempts(aws_env, monkeypatch):
    """A real signed request to a loopback endpoint that always throttles: one retry layer, so
    max_retries=2 means 3 HTTP requests in all (botocore's own retries would multiply them)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hits.append(self.path)
            body = json.dumps({"message": "Rate exceeded"}).encode()
            self.send_response(429)
            self.send_header("x-amzn-ErrorType", "ThrottlingException")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", f"http://127.0.0.1:{srv.server_address[1]}")
    try:
        sleeps: list[float] = []
        client = _client(LLMSpec(backend="bedrock", max_retries=2, max_concurrency=1), sleeps)
        with pytest.raises(LLMError, match="after 3 attempts"):
            client.generate(["x"])
    finally:
        srv.shutdown()
        srv.server_close()
    assert len(hits) == 3 and len(sleeps) == 2
