"""Logging for the `reclaif` command: `-v` shows this project's debug lines, never a secret.

Every line printed from outside data (a model's answer, an endpoint's error body, an example
id) goes through `for_terminal`: escape sequences and control characters out, secrets masked.

Two guards against secrets, because either alone leaks:
- Third-party loggers that print requests (botocore prints the canonical request with
  `x-amz-security-token` and the access key id, and the whole prompt; urllib3 prints URLs) stay
  at WARNING whatever the verbosity: `-v` turns on DEBUG for the `reclaif` loggers only.
- Every line that reaches a handler is redacted: Authorization and AWS token headers, AWS
  access key ids, and the literal value of every environment variable whose name says it holds
  a secret (…KEY, …TOKEN, …SECRET, …PASSWORD, …CREDENTIAL(S)), and of every variable a config
  named as holding a key (`secret_from_env`: `--api-key-env LLM_AUTH` is masked too, whatever
  its name), so a secret an endpoint echoes back in an error message is masked too.
"""
from __future__ import annotations

import logging
import os
import re
from typing import IO

QUIET_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "httpcore",
                   "requests", "filelock", "fsspec")
MASK = "***"
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(_|$)", re.I)
_PATTERNS = [
    # "Authorization: Bearer sk-..", "authorization=AWS4-HMAC-SHA256 Credential=..."
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)[^'\"\n]+"),
    re.compile(r"(?i)(x-amz-security-token['\"]?\s*[:=]\s*['\"]?)[^\s'\",;}]+"),
    re.compile(r"(?i)(x-amz-credential=)[^\s&'\"]+"),
    re.compile(r"()\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b"),
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
]
# Escape sequences a terminal acts on (CSI "\x1b[...", OSC "\x1b]...BEL", and the rest), and
# any other C0/C1 control character: a model's answer or an endpoint's error body can retitle,
# clear or hyperlink the user's terminal, or hide text, if printed raw.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
                      r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?|\x1b.?|\x9b[0-?]*[ -/]*[@-~]?")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_NAMED_SECRETS: set[str] = set()  # values read through secret_from_env


def terminal_safe(text: str) -> str:
    """`text` without terminal escape sequences or control characters (newlines and tabs kept)."""
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


def secret_from_env(name: str) -> str:
    """The value of environment variable `name`, which a config says holds a key: from now on
    it is masked wherever this process prints or logs it, whatever the variable is called."""
    value = os.environ.get(name, "") if name else ""
    if len(value) >= 4:
        _NAMED_SECRETS.add(value)
    return value


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables named like secrets (8+ characters: shorter ones would
    mask ordinary words), longest first so a value containing another is masked whole."""
    env = os.environ if environ is None else environ
    vals = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 8}
    return sorted(vals | _NAMED_SECRETS, key=len, reverse=True)


def redact(text: str) -> str:
    for value in secret_values():
        text = text.replace(value, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


def for_terminal(text: str) -> str:
    """What may be printed of `text`: secrets masked, terminal escapes and controls removed."""
    return terminal_safe(redact(text))


class RedactingFormatter(logging.Formatter):
    """Formats as usual (tracebacks included), then cleans the whole line (`for_terminal`)."""

    def format(self, record: logging.LogRecord) -> str:
        return for_terminal(super().format(record))


def setup_logging(verbose: bool = False, stream: IO[str] | None = None) -> None:
    """Root at INFO with one redacting stderr handler; `verbose` adds DEBUG for reclaif only."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("reclaif").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
