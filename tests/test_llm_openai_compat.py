"""OpenAI-compatible client against a loopback http.server (127.0.0.1, port 0, in a thread)."""
from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reclaif.config import LLMSpec
from reclaif.errors import ConfigError, LLMError
from reclaif.llm import make_client
from reclaif.llm.openai_compat import OpenAICompatClient
from reclaif.llm.retry import Backoff

sys.path.insert(0, str(Path(__file__).parent))
from llm_server import Server, chat_body, echo, serve  # noqa: E402

KEY = "sk-test-do-not-log-123"


@pytest.fixture
def server() -> Iterator[Server]:
    with serve() as s:
        yield s


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
    server.script = [(500, {}, b"boom")] * 3 + [echo({"messages": [{"content": "never"}]})]
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


def test_settled_loses_only_the_prompt_that_failed(server):
    server.respond = lambda body: ((500, {}, b"down") if body["messages"][0]["content"] == "bad"
                                   else echo(body))
    sleeps: list[float] = []
    client = _client(server, sleeps, max_retries=1, max_concurrency=1)
    ok, bad, fine = client.generate_settled(["ok", "bad", "fine"])
    assert (ok.answers, ok.retries, fine.answers) == (["ok#0"], 0, ["fine#0"])
    assert bad.answers is None and bad.retries == 1 and "after 2 attempts" in str(bad.error)
    asked = [r[2]["messages"][0]["content"] for r in server.requests]
    assert sorted(asked) == ["bad", "bad", "fine", "ok"]  # nothing that succeeded is re-asked
    with pytest.raises(LLMError, match="after 2 attempts"):
        client.generate(["ok", "bad"])


def test_backoff_knobs_come_from_the_spec():
    spec = LLMSpec(backend="openai_compat", model="m", base_url="http://127.0.0.1:9/v1",
                   max_retries=3, retry_base_s=0.01, retry_max_s=0.05)
    b = OpenAICompatClient(spec).backoff
    assert (b.max_retries, b.base_s, b.max_s) == (3, 0.01, 0.05)
    assert all(0 <= b.delay(k) <= 0.05 for k in range(10))


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


# ------------------------------------------------------------ hostile or broken endpoints
class RawServer:
    """A loopback TCP server whose handler writes raw HTTP bytes (for what http.server cannot
    do: trickle a body, lie about its length, stream without end). Records each request head."""

    def __init__(self, handler) -> None:
        import threading

        self.heads: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.handler = handler
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            got = conn.recv(65536)
            if not got:
                return
            data += got
        head, _, body = data.partition(b"\r\n\r\n")
        self.heads.append(head)
        # Read the whole request body: closing a socket with unread bytes sends RST, not FIN,
        # and the client would see "connection reset" instead of the short body under test.
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            got = conn.recv(65536)
            if not got:
                return
            body += got
        try:
            self.handler(conn)
        except OSError:
            pass  # the client hung up: what these tests expect it to do
        finally:
            try:
                conn.shutdown(socket.SHUT_WR)  # FIN after the bytes sent, so none are lost
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _raw_client(url: str, **kw) -> OpenAICompatClient:
    spec = LLMSpec(backend="openai_compat", model="m", base_url=url, api_key_env="RECLAIF_TEST_KEY",
                   max_retries=0, **{"timeout_s": 3, **kw})
    return OpenAICompatClient(spec, backoff=Backoff(max_retries=0, sleep=lambda s: None))


def test_redirect_to_another_origin_is_not_followed_and_gets_no_key(monkeypatch):
    monkeypatch.setenv("RECLAIF_TEST_KEY", KEY)
    with serve() as other, serve() as first:
        first.script = [(302, {"Location": other.url + "/chat/completions"}, b"")]
        with pytest.raises(LLMError, match="redirect not followed") as err:
            _raw_client(first.url).generate(["q"])
        assert other.requests == [] and len(first.requests) == 1
        assert KEY not in str(err.value)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/v1", "127.0.0.1:8000/v1",
                                 "http:///v1", "http://user:pw@127.0.0.1:9/v1"])
def test_only_http_and_https_urls_with_a_host_are_accepted(url):
    with pytest.raises(ConfigError, match="base_url") as err:
        _raw_client(url)
    assert "root:" not in str(err.value)


def test_a_50_mb_response_is_refused_without_being_read():
    def huge(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 52428800\r\n\r\n")
        for _ in range(50 * 16):
            conn.sendall(b"x" * 65536)

    srv = RawServer(huge)
    try:
        with pytest.raises(LLMError, match="52428800 bytes is over the 8388608-byte limit"):
            _raw_client(srv.url).generate(["q"])
    finally:
        srv.close()


def test_an_endless_response_without_a_length_stops_at_the_cap():
    import time

    def endless(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        while True:
            conn.sendall(b"x" * 65536)

    srv = RawServer(endless)
    try:
        client = _raw_client(srv.url)
        client.max_response_bytes = 1 << 20
        t0 = time.monotonic()
        with pytest.raises(LLMError, match="over the 1048576-byte limit"):
            client.generate(["q"])
        assert time.monotonic() - t0 < 3
    finally:
        srv.close()


def test_a_server_trickling_a_byte_every_1_5_s_hits_the_overall_deadline():
    import time

    def trickle(conn):
        body = chat_body(["slow"])
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for b in body:
            conn.sendall(bytes([b]))
            time.sleep(1.5)

    srv = RawServer(trickle)
    try:
        t0 = time.monotonic()
        with pytest.raises(LLMError, match="no complete response within timeout_s=3 s"):
            _raw_client(srv.url, timeout_s=3).generate(["q"])
        assert time.monotonic() - t0 < 4.5
    finally:
        srv.close()


def test_trickled_headers_hit_the_deadline_too():
    import time

    def trickle(conn):
        for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 100:
            conn.sendall(bytes([b]))
            time.sleep(0.5)

    srv = RawServer(trickle)
    try:
        t0 = time.monotonic()
        with pytest.raises(LLMError, match="no complete response within timeout_s=1 s"):
            _raw_client(srv.url, timeout_s=1).generate(["q"])
        assert time.monotonic() - t0 < 2.5
    finally:
        srv.close()


def test_a_response_cut_short_is_retried_not_parsed():
    body = chat_body(["whole answer"])

    def short(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])

    srv = RawServer(short)
    try:
        with pytest.raises(LLMError, match=r"after 1 attempts: connection closed after 10 of"):
            _raw_client(srv.url).generate(["q"])
    finally:
        srv.close()
