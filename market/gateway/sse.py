"""Server-sent events from an OpenAI-compatible upstream, read as they arrive (pure).

`EventReader.feed(bytes)` returns the complete events so far (each with its raw bytes, to
pass on unchanged); `inspect` says what one carries: the `[DONE]` marker, a usage object,
completion text (one chunk, counted as one token when no usage arrives), and whether it
is the usage-only chunk (`choices` empty) that `stream_options.include_usage` adds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from market.gateway.metering import Usage, parse_usage

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_decoder = msgspec.json.Decoder()


@dataclass(frozen=True, slots=True)
class Event:
    raw: bytes  # the event with its terminating blank line, as received
    done: bool = False
    usage: Usage | None = None
    has_content: bool = False
    usage_only: bool = False


class EventReader:
    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Event]:
        self._buffer += data
        events: list[Event] = []
        while (match := _BOUNDARY.search(self._buffer)) is not None:
            raw = self._buffer[: match.end()]
            self._buffer = self._buffer[match.end() :]
            events.append(inspect(raw))
        return events


def _data(raw: bytes) -> bytes:
    lines = [line for line in raw.splitlines() if line.startswith(b"data:")]
    return b"\n".join(line[5:].lstrip(b" ") for line in lines)


def _content(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(
            delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls")
        )
    return bool(choice.get("text"))


def inspect(raw: bytes) -> Event:
    data = _data(raw)
    if data.strip() == b"[DONE]":
        return Event(raw, done=True)
    try:
        obj = _decoder.decode(data)
    except msgspec.DecodeError:
        return Event(raw)
    if not isinstance(obj, dict):
        return Event(raw)
    choices = obj.get("choices")
    choices = choices if isinstance(choices, list) else []
    usage = parse_usage(obj.get("usage"))
    return Event(
        raw, usage=usage, has_content=any(_content(c) for c in choices),
        usage_only=usage is not None and not choices,
    )  # fmt: skip
