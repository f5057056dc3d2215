"""Structured logs: one JSON object per line (standard library logging, msgspec JSON).

`configure(level)` sends every logger's records to stderr as JSON lines:
`{"ts": "2026-12-01T23:15:24.123Z", "level": "info", "logger": "...", "event": "...",
...}` with whatever the call passed as `extra=` (e.g. the access line's `request_id`,
`status`; a batch's `batch`, `request_ids`), and `exc` with the traceback of an exception.

The lines of one turn of the event loop are written together (`JsonLinesHandler`): an
access line per request was a write to stderr per request, a system call each. A line
at `warning` or above, or logged with no event loop running in its thread, is written at
once, with any still held before it; so are the held lines when the process exits
(logging's shutdown flushes every handler).

A line made on every request (`ops.observe`'s access line) can skip the `LogRecord`:
`direct_handler(logger, level)` is the one `JsonLinesHandler` a logger's records would
reach with nothing else on the way (no filter, no other handler: what `configure` sets
up), and its `write_line` takes the line's fields and makes the same line the formatter
would (`json_line`, the one place a line is made), secrets scrubbed alike. Where
anything else listens (a test's capture, a handler of the operator's), the caller logs
as usual.

Secrets never reach a line: a field whose name says secret (`signature`, `secret`,
`private_key`, `credential`, `authorization`, `password`, `token` as a whole word, ...)
is written as "[redacted]", and so is anything in a message or value that looks like an
inference key (`tkx_...`), a PEM private key or a `Bearer` credential. The exchange does
not log such things in the first place; this is the net under it.

What a client chose (a request's path, the key id it sent) is cut to `FIELD_MAX_CHARS`
by whoever logs it (`clipped`), so no request makes a line tens of kilobytes long.
"""

from __future__ import annotations

import asyncio
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
_HINT = re.compile("|".join(re.escape(hint) for hint in _SECRET_HINTS))


#: The longest a client-chosen value (a request's path, a key id) is written in a line:
#: the HTTP parser alone lets a path of tens of kilobytes through, a line each request.
FIELD_MAX_CHARS = 1024


def clipped(value: str) -> str:
    """`value` cut to `FIELD_MAX_CHARS`, saying how much was cut ("...[+N chars]")."""
    if len(value) <= FIELD_MAX_CHARS:
        return value
    return f"{value[:FIELD_MAX_CHARS]}...[+{len(value) - FIELD_MAX_CHARS} chars]"


def scrub_text(text: str) -> str:
    if _HINT.search(text) is not None:
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


def json_line(
    created: float, level: str, logger: str, event: str, fields: Any, exc: str | None = None
) -> str:
    """One line: time, level, logger, event, then `fields` ((name, value) pairs; a name
    taken already is skipped) and `exc`, each scrubbed of secrets."""
    line: dict[str, Any] = {
        "ts": _timestamp(created), "level": level, "logger": logger, "event": event
    }  # fmt: skip
    plain = exc is None  # every value a scalar under a name that is no secret's
    for name, value in fields:
        if name not in line:
            line[name] = value
            if plain and (type(value) not in _SCALARS or _secret_name(name)):
                plain = False
    if plain:
        # A hint of a secret in no value (the line holds each as it is: none of the hints'
        # characters is escaped in JSON) means scrubbing would change nothing: one search
        # of the line instead of one of each value.
        text = msgspec.json.encode(line).decode()
        if _HINT.search(text) is None:
            return text
    line["event"] = scrub_text(event)
    for name in list(line)[4:]:
        line[name] = _scrub(name, line[name])
    if exc is not None:
        line["exc"] = scrub_text(exc)
    return msgspec.json.encode(line).decode()


#: The types of value a line holds as they are (once the line has no secret's hint).
_SCALARS = frozenset({str, int, float, bool, type(None)})


class JsonFormatter(logging.Formatter):
    """A record as one JSON line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = ((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        exc = self.formatException(record.exc_info) if record.exc_info else None
        return json_line(
            record.created, record.levelname.lower(), record.name, record.getMessage(), fields,
            exc,
        )  # fmt: skip


class JsonLinesHandler(logging.StreamHandler[TextIO]):
    """A `StreamHandler` that writes the lines of one turn of the event loop together
    (module docstring)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._held: list[str] = []
        #: The loop whose next turn writes the held lines (None: nothing scheduled).
        self._flushing_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:  # called under the handler's lock
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self._hold(line, record.levelno)

    def write_line(self, level: int, logger: str, event: str, fields: dict[str, Any]) -> None:
        """The line the formatter would make of a record of `logger` at `level` with the
        message `event` and `fields` as its `extra` (see `direct_handler`)."""
        name = logging.getLevelName(level).lower()
        line = json_line(time.time(), name, logger, event, fields.items()) + "\n"
        with self.lock:  # type: ignore[union-attr]  # set by Handler.__init__
            self._hold(line, level)

    def _hold(self, line: str, level: int) -> None:
        loop = asyncio._get_running_loop()
        if loop is None or level >= logging.WARNING:
            self._held.append(line)
            self._write_held()
            return
        self._held.append(line)
        if self._flushing_on is not loop:
            if self._flushing_on is not None:  # scheduled on a loop that has gone
                self._write_held()
            self._flushing_on = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # set by Handler.__init__
            self._write_held()

    def _write_held(self) -> None:
        held, self._held = self._held, []
        self._flushing_on = None
        if not held:
            return
        try:
            self.stream.write(held[0] if len(held) == 1 else "".join(held))
            self.stream.flush()
        except Exception:  # as StreamHandler: a broken stream must not stop the server
            self.handleError(logging.makeLogRecord({"msg": "lost log lines"}))


def direct_handler(logger: logging.Logger, level: int) -> JsonLinesHandler | None:
    """The one handler `logger`'s records at `level` reach, if that is a
    `JsonLinesHandler` and nothing else is on the way (no filter, no other handler);
    None if the level is off, or anything else would see the record."""
    if not logger.isEnabledFor(level):
        return None
    found: JsonLinesHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if found is not None or type(handler) is not JsonLinesHandler:
                return None
            if handler.filters or level < handler.level:
                return None
            found = handler
        current = current.parent if current.propagate else None
    return found


def configure(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Every record of the process to `stream` (stderr) as JSON lines, at `level`."""
    handler = JsonLinesHandler(stream or sys.stderr)
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
