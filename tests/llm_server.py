"""A loopback OpenAI-compatible chat server (127.0.0.1, port 0, in a thread) for the tests.

Replies come from `script` first (a queue), then from `respond(body)`. A reply is
(status, headers, body) or (status, headers, body, delay_s): the handler sleeps delay_s before
answering, so a delay past the client's timeout is a hung endpoint. Every request is recorded.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Reply = tuple  # (status, headers, body) or (status, headers, body, delay_s)


def chat_body(texts: list[str]) -> bytes:
    """A chat/completions response body with one choice per text."""
    return json.dumps({"choices": [{"index": i, "message": {"role": "assistant", "content": t}}
                                   for i, t in enumerate(texts)]}).encode()


def echo(body: dict) -> Reply:
    """The default reply: each of the n choices echoes the prompt with its index."""
    text = body["messages"][0]["content"]
    return 200, {}, chat_body([f"{text}#{i}" for i in range(body.get("n", 1))])


class Server:
    """Answers POSTs from `script`, then `respond`; records (path, headers, body) of each."""

    def __init__(self, respond: Callable[[dict], Reply] = echo) -> None:
        self.script: list[Reply] = []
        self.respond = respond
        self.requests: list[tuple[str, dict[str, str], dict]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append((self.path, dict(self.headers), body))
                    reply = server.script.pop(0) if server.script else None
                # respond() runs outside the lock: it may keep its own state and lock.
                status, headers, payload, *delay = reply or server.respond(body)
                if delay and delay[0] > 0:
                    time.sleep(delay[0])
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up: that was the point of the delay

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@contextmanager
def serve(respond: Callable[[dict], Reply] = echo) -> Iterator[Server]:
    """A running Server, shut down on exit."""
    s = Server(respond)
    t = threading.Thread(target=s.httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()
