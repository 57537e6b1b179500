"""What the CLI prints from outside data is cleaned in one place (logs.for_terminal): a key
read through a config's key variable is masked whatever the variable's name, and an endpoint's
terminal escapes never reach the user's terminal (issue 34 items 1-2)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from reclaif.cli import main
from reclaif.logs import for_terminal, secret_from_env, setup_logging

sys.path.insert(0, str(Path(__file__).parent))
from llm_server import serve  # noqa: E402

KEY = "sk-live-4f9a8b7c6d5e"
NASTY = "\x1b]0;pwned title\x07\x1b[2J\x1b]8;;http://evil/\x1b\\click\x1b]8;;\x1b\\\x9b31m"


def test_an_echoed_key_and_terminal_escapes_never_reach_the_error_line(monkeypatch, capsys):
    monkeypatch.setenv("LLM_AUTH", KEY)  # a name that does not look secret
    body = f'{{"error": "invalid api key: {KEY} {NASTY}"}}'.encode()
    with serve() as server:
        server.script = [(401, {}, body)]
        rc = main(["recommend", "--backend", "openai_compat", "--base-url", server.url,
                   "--api-key-env", "LLM_AUTH", "--model", "m", "--history", "a; b",
                   "--candidates", "x; y"])
        assert server.requests and server.requests[0][1]["Authorization"] == f"Bearer {KEY}"
    err = capsys.readouterr().err
    assert rc != 0 and "reclaif: error:" in err and "invalid api key" in err
    assert KEY not in err and "\x1b" not in err and "\x07" not in err and "\x9b" not in err


def test_log_lines_are_cleaned_too(monkeypatch, capsys):
    monkeypatch.setenv("ANOTHER_NAME", "abcd-1234-efgh")
    assert secret_from_env("ANOTHER_NAME") == "abcd-1234-efgh"
    setup_logging()
    logging.getLogger("reclaif.test").warning("retrying: %s %s Bearer zz9-plural-z-alpha",
                                              "abcd-1234-efgh", NASTY)
    err = capsys.readouterr().err
    assert "abcd-1234-efgh" not in err and "zz9-plural" not in err and "\x1b" not in err
    assert for_terminal("line one\n\tline two") == "line one\n\tline two"  # layout kept


def test_recommend_takes_timeout_and_retries_and_refuses_bad_ones(monkeypatch, capsys):
    import time

    monkeypatch.setenv("LLM_AUTH", KEY)
    with serve() as server:
        server.script = [(200, {}, b"{}", 5.0)]  # an endpoint that hangs 5 s
        t0 = time.monotonic()
        rc = main(["recommend", "--backend", "openai_compat", "--base-url", server.url,
                   "--api-key-env", "LLM_AUTH", "--model", "m", "--history", "a; b",
                   "--candidates", "x; y", "--timeout", "0.5", "--retries", "0"])
        took = time.monotonic() - t0
    assert rc == 2 and took < 4 and len(server.requests) == 1
    for bad in (["--timeout", "0"], ["--timeout", "nan"], ["--retries", "-1"], ["--top-k", "0"]):
        try:
            main(["recommend", "--history", "a", "--candidates", "x", *bad])
        except SystemExit as e:
            assert e.code == 2
        else:
            raise AssertionError(f"{bad} accepted")


_SLOW = """
import sys
sys.path.insert(0, {tests!r})
from llm_server import serve
from reclaif.cli import main
with serve() as server:
    server.script = [(200, {{}}, b"{{}}", 60.0)]
    print("ready", flush=True)
    sys.exit(main(["recommend", "--backend", "openai_compat", "--base-url", server.url,
                   "--model", "m", "--history", "a", "--candidates", "x", "--retries", "0",
                   "--timeout", "120"]))
"""


def test_sigterm_is_one_line_and_exit_143():
    """SIGTERM inside a request (the endpoint answers in 60 s): one line, exit 143, and at
    once, not when the request in flight ends (llm/threads.py)."""
    import os
    import signal
    import subprocess
    import time

    root = Path(__file__).resolve().parents[1]
    child = subprocess.Popen([sys.executable, "-c", _SLOW.format(tests=str(Path(__file__).parent))],
                             env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    time.sleep(1.5)  # inside the request
    child.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, err = child.communicate(timeout=90)
    assert child.returncode == 143, err
    assert time.monotonic() - sent < 15, "the command waited for the request in flight"
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines[-1].startswith("reclaif: terminated (SIGTERM)") and "Traceback" not in err
