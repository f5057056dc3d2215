"""Structured logs: one JSON object per line (standard library logging, msgspec JSON).

`configure(level)` sends every logger's records to stderr as JSON lines:
`{"ts": "2026-12-01T23:15:24.123Z", "level": "info", "logger": "...", "event": "...",
...}` with whatever the call passed as `extra=` (e.g. the access line's `request_id`,
`status`; a batch's `batch`, `request_ids`), and `exc` with the traceback of an exception.

Secrets never reach a line: a field whose name says secret (`signature`, `secret`,
`private_key`, `credential`, `authorization`, `password`, `token` as a whole word, ...)
is written as "[redacted]", and so is anything in a message or value that looks like an
inference key (`tkx_...`), a PEM private key or a `Bearer` credential. The exchange does
not log such things in the first place; this is the net under it.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import time
from typing import Any, TextIO

import msgspec

REDACTED = "[redacted]"

#: Field names whose values are never written.
_SECRET_NAME = re.compile(
    r"(signature|secret|private|credential|authorization|password|passphrase|api_key|"
    r"^token$|cookie)",
    re.IGNORECASE,
)
#: Secrets in free text: inference keys, PEM private keys, bearer credentials.
_SECRET_TEXT = re.compile(
    r"tkx_[A-Za-z0-9_-]+"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]+",
    re.DOTALL,
)

#: The attributes every LogRecord has: not "extra" fields.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


#: Substrings without which `_SECRET_TEXT` cannot match (a cheap test first: most text
#: of most lines holds none of them).
_SECRET_HINTS = ("tkx_", "-----BEGIN", "earer", "EARER")


def scrub_text(text: str) -> str:
    if any(hint in text for hint in _SECRET_HINTS):
        return _SECRET_TEXT.sub(REDACTED, text)
    return text


@functools.lru_cache(maxsize=4096)
def _secret_name(name: str) -> bool:
    return _SECRET_NAME.search(name) is not None


def _scrub(name: str, value: Any) -> Any:
    if _secret_name(name):
        return REDACTED
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, list | tuple):
        return [_scrub("", item) for item in value]
    if isinstance(value, dict):
        return {str(k): _scrub(str(k), v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub_text(str(value))


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _timestamp(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return f"{_second(seconds)}.{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    """A record as one JSON line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": scrub_text(record.getMessage()),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in line:
                line[name] = _scrub(name, value)
        if record.exc_info:
            line["exc"] = scrub_text(self.formatException(record.exc_info))
        return msgspec.json.encode(line).decode()


def configure(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Every record of the process to `stream` (stderr) as JSON lines, at `level`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # What a line does not show is not gathered for it: the caller's file and line (a walk
    # of the stack per record), thread, process (logging's documented optimisations).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
