"""OpenAI-compatible client against a loopback http.server (127.0.0.1, port 0, in a thread)."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reclaif.config import LLMSpec
from reclaif.errors import ConfigError, LLMError
from reclaif.llm import make_client
from reclaif.llm.openai_compat import OpenAICompatClient
from reclaif.llm.retry import Backoff

KEY = "sk-test-do-not-log-123"


class Server:
    """Answers POSTs from a script of (status, headers, body) replies, recording each request."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str], bytes]] = []
        self.requests: list[tuple[str, dict[str, str], dict]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append((self.path, dict(self.headers), body))
                    status, headers, payload = (server.script.pop(0) if server.script
                                                else (200, {}, server.default(body)))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @staticmethod
    def default(body: dict) -> bytes:
        text = body["messages"][0]["content"]
        choices = [{"index": i, "message": {"role": "assistant", "content": f"{text}#{i}"}}
                   for i in range(body.get("n", 1))]
        return json.dumps({"choices": choices}).encode()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    t = threading.Thread(target=s.httpd.serve_forever, daemon=True)
    t.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _client(server: Server, sleeps: list[float], **kw) -> OpenAICompatClient:
    spec = LLMSpec(backend="openai_compat", model="m-7b", base_url=server.url,
                   api_key_env="RECLAIF_TEST_KEY", timeout_s=5, **kw)
    return OpenAICompatClient(spec, backoff=Backoff(max_retries=spec.max_retries,
                                                    sleep=sleeps.append))


def test_request_body_headers_and_answers(server, monkeypatch):
    monkeypatch.setenv("RECLAIF_TEST_KEY", KEY)
    client = _client(server, [], max_concurrency=1)
    out = client.generate(["hello", "bye"], n=2, temperature=0.8, top_p=0.9,
                          max_new_tokens=17, seed=5)
    assert out == [["hello#0", "hello#1"], ["bye#0", "bye#1"]]
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert body == {"model": "m-7b", "messages": [{"role": "user", "content": "hello"}],
                    "n": 2, "temperature": 0.8, "top_p": 0.9, "max_tokens": 17, "seed": 5}
    assert KEY not in repr(client)


def test_429_then_200_honours_retry_after(server):
    sleeps: list[float] = []
    client = _client(server, sleeps)
    server.script = [(429, {"Retry-After": "2"}, b'{"error": "slow down"}')]
    assert client.generate(["q"]) == [["q#0"]]
    assert sleeps == [2.0] and len(server.requests) == 2


def test_500s_until_retries_run_out(server, monkeypatch):
    monkeypatch.setenv("RECLAIF_TEST_KEY", KEY)
    sleeps: list[float] = []
    client = _client(server, sleeps, max_retries=2)
    server.script = [(500, {}, b"boom")] * 3 + [(200, {}, Server.default(
        {"messages": [{"content": "never"}]}))]
    with pytest.raises(LLMError, match="m-7b.*after 3 attempts") as err:
        client.generate(["q"])
    assert len(server.requests) == 3 and len(sleeps) == 2
    assert all(0 <= s <= 30 for s in sleeps)
    assert KEY not in str(err.value)


def test_malformed_json_is_llm_error(server):
    client = _client(server, [])
    server.script = [(200, {}, b"{not json")]
    with pytest.raises(LLMError, match="malformed response"):
        client.generate(["q"])


def test_client_error_4xx_is_final(server):
    sleeps: list[float] = []
    client = _client(server, sleeps)
    server.script = [(400, {}, b'{"error": "bad model"}')]
    with pytest.raises(LLMError, match="HTTP 400"):
        client.generate(["q"])
    assert sleeps == [] and len(server.requests) == 1


def test_server_ignoring_n_is_asked_again(server):
    client = _client(server, [])
    one = json.dumps({"choices": [{"message": {"content": "only"}}]}).encode()
    server.script = [(200, {}, one), (200, {}, one), (200, {}, one)]
    assert client.generate(["q"], n=3, temperature=1.0, seed=10) == [["only"] * 3]
    assert [r[2]["n"] for r in server.requests] == [3, 2, 1]
    assert [r[2]["seed"] for r in server.requests] == [10, 11, 12]


def test_timeout_is_retried_then_llm_error():
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers → read timeout
    try:
        sleeps: list[float] = []
        spec = LLMSpec(backend="openai_compat", model="m", timeout_s=0.3, max_retries=1,
                       base_url=f"http://127.0.0.1:{listener.getsockname()[1]}/v1")
        client = OpenAICompatClient(spec, backoff=Backoff(max_retries=1, sleep=sleeps.append))
        with pytest.raises(LLMError, match="after 2 attempts"):
            client.generate(["q"])
        assert len(sleeps) == 1
    finally:
        listener.close()


def test_missing_base_url_is_config_error():
    with pytest.raises(ConfigError, match="base_url"):
        make_client(LLMSpec(backend="openai_compat", model="m"))


def test_unknown_backend_is_config_error():
    with pytest.raises(ConfigError, match="backend"):
        make_client(LLMSpec(backend="nope"))


def test_vllm_missing_is_clear_error(monkeypatch):
    import sys

    from reclaif.errors import ReclaifError

    monkeypatch.setitem(sys.modules, "vllm", None)  # as on a machine without vllm
    with pytest.raises(ReclaifError, match="pip install vllm"):
        make_client(LLMSpec(backend="vllm"))
