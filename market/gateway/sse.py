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
        buffer = self._buffer + data if self._buffer else data
        events: list[Event] = []
        start = 0
        while (match := _BOUNDARY.search(buffer, start)) is not None:
            events.append(inspect(buffer[start : match.end()]))
            start = match.end()
        self._buffer = buffer[start:]
        return events


def _data(raw: bytes) -> bytes:
    if raw.startswith(b"data: ") and raw.endswith(b"\n\n") and raw.count(b"\n") == 2:
        return raw[6:-2]  # the usual event: one data line (what the loop below makes of it)
    lines = [line for line in raw.splitlines() if line.startswith(b"data:")]
    return b"\n".join(line[5:].lstrip(b" ") for line in lines)


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[Any] | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    text: str | None = None


class _Chunk(msgspec.Struct):
    """A chunk as OpenAI-compatible servers send it: decoded into these few fields only
    (the rest skipped), which is most of the relay's CPU otherwise; a chunk of another
    shape is read by the generic path of `inspect`."""

    choices: list[_Choice] = []
    usage: Any = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)


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
        chunk = _chunk_decoder.decode(data)
    except msgspec.DecodeError:  # ValidationError included: another shape
        pass
    except RecursionError:  # nested too deeply: passed on, read as carrying nothing
        return Event(raw)
    else:
        usage = parse_usage(chunk.usage)
        return Event(
            raw, usage=usage, usage_only=usage is not None and not chunk.choices,
            has_content=any(
                bool(c.delta.content or c.delta.reasoning_content or c.delta.tool_calls)
                if c.delta is not None else bool(c.text)
                for c in chunk.choices
            ),
        )  # fmt: skip
    try:
        obj = _decoder.decode(data)
    except (msgspec.DecodeError, RecursionError):
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
