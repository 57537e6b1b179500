"""Errors a user can act on: each names the file, line, field or key at fault."""


class ReclaifError(Exception):
    """Base class; the CLI prints these as one line and exits 2, without a traceback."""


class DataError(ReclaifError):
    """A dataset file is missing, malformed, or inconsistent (names file and line/field)."""


class ConfigError(ReclaifError):
    """A config key is unknown, has the wrong type, or an invalid value (names the key)."""


class CheckpointError(ReclaifError):
    """A directory given as a model checkpoint is not one."""


class LLMError(ReclaifError):
    """An LLM endpoint failed for good (after retries)."""


class PhaseError(ReclaifError):
    """A pipeline phase (e.g. a training subprocess) failed; names the log to read."""


class Terminated(BaseException):
    """SIGTERM reached the `reclaif` command (a scheduler's cancel, `kill`). A BaseException,
    as KeyboardInterrupt is: no `except Exception` on the way out swallows it, and every
    `finally` (samplers released, files closed) runs before the one-line exit."""
