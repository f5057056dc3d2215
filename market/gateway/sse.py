"""Server-sent events from an OpenAI-compatible upstream, read as they arrive (pure).

`EventReader.feed(bytes)` returns the complete events so far (each with its raw bytes, to
pass on unchanged; none longer than its `max_event_bytes`, see `EventReader`); `inspect`
says what one carries: the `[DONE]` marker, a usage object, completion text (one chunk,
counted as one token when no usage arrives), and whether it is the usage-only chunk
(`choices` empty) that `stream_options.include_usage` adds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from market.gateway.metering import Usage, parse_usage

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
#: The most one event may be (bytes; `TOKEX_GATEWAY_MAX_EVENT_BYTES`): a chunk of tokens
#: is some hundreds of bytes.
MAX_EVENT_BYTES = 1024 * 1024

#: What decoding JSON that came from an upstream raises when it is not JSON of the shape
#: asked for, or nested too deeply (msgspec's RecursionError): the caller's "not JSON".
UNDECODABLE = (msgspec.DecodeError, RecursionError)
_decoder = msgspec.json.Decoder()


@dataclass(frozen=True, slots=True)
class Event:
    raw: bytes  # the event with its terminating blank line, as received
    done: bool = False
    usage: Usage | None = None
    has_content: bool = False
    usage_only: bool = False


class EventReader:
    """Events of `max_event_bytes` at most: once one is longer (whole, or still without
    its end), `too_long` is set and the reader gives no more (the stream is cut there).

    The part of an event read so far is kept in a bytearray, each read appended and only
    it searched for the end (from 3 bytes before it: a `\r\n\r\n` split across reads),
    so an event costs time linear in its size, however many reads it comes in."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()
        self.max_event_bytes = max_event_bytes
        self.too_long = False

    def feed(self, data: bytes) -> list[Event]:
        if self.too_long:
            return []
        if self._buffer:  # the rest of an event: appended, not the whole copied again
            searched = len(self._buffer) - 3
            self._buffer += data
            events, end = self._events(self._buffer, max(searched, 0))
            del self._buffer[:end]
        else:  # the usual read: whole events, sliced from it as they are
            events, end = self._events(data, 0)
            if end < len(data):
                self._buffer = bytearray(data[end:])
        if len(self._buffer) > self.max_event_bytes:
            self.too_long = True
        if self.too_long:
            self._buffer = bytearray()
        return events

    def _events(self, buffer: bytes | bytearray, searched: int) -> tuple[list[Event], int]:
        """The events whole in `buffer` (its end not before `searched`), and where the
        rest begins."""
        events: list[Event] = []
        start = 0
        while (match := _BOUNDARY.search(buffer, searched)) is not None:
            end = match.end()
            if end - start > self.max_event_bytes:
                self.too_long = True
                break
            events.append(inspect(bytes(buffer[start:end])))
            start = searched = end
        return events, start


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
    except UNDECODABLE:
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
