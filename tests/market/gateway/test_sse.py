"""Reading an upstream's server-sent events (`market.gateway.sse.EventReader`): events
split anywhere across reads come out whole, a long event costs time linear in its size,
and an event longer than the cap stops the reader."""

from __future__ import annotations

import random
import time

from market.gateway.sse import EventReader

EVENTS = [b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n',
          b'data: {"choices": []}\r\n\r\n', b"event: x\rdata: 1\r\r", b"\n\n",
          b": a comment\n\n", b"data: [DONE]\n\n"]  # fmt: skip


def test_events_split_at_every_point_come_out_whole() -> None:
    whole = b"".join(EVENTS)
    for cut in range(len(whole) + 1):
        reader = EventReader()
        raw = [e.raw for e in reader.feed(whole[:cut]) + reader.feed(whole[cut:])]
        assert raw == EVENTS, cut
    rng = random.Random(7)
    for _ in range(200):  # in pieces of 1 to 5 bytes: boundaries across three reads
        reader, got, at = EventReader(), [], 0
        while at < len(whole):
            step = rng.randint(1, 5)
            got += [e.raw for e in reader.feed(whole[at : at + step])]
            at += step
        assert got == EVENTS


def test_a_long_event_costs_time_linear_in_its_size() -> None:
    """Found in review: each read copied the buffer and searched it from its start, so
    an event with no blank line cost quadratic CPU (40 MB: 4.9 s, 120 MB: 38.5 s)."""
    size, piece = 8 * 1024 * 1024, 8 * 1024
    reader = EventReader(max_event_bytes=2 * size)
    data = b"data: " + b" " * piece
    started = time.process_time()
    for _ in range(size // piece):
        assert reader.feed(data) == []
    (event,) = reader.feed(b"1\n\n")
    assert time.process_time() - started < 1.0
    assert len(event.raw) == (size // piece) * len(data) + 3


def test_an_event_longer_than_the_cap_stops_the_reader() -> None:
    first = b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n'
    reader = EventReader(max_event_bytes=1000)
    assert [e.raw for e in reader.feed(first + b"data: " + b" " * 500)] == [first]
    assert not reader.too_long
    assert reader.feed(b" " * 500) == [] and reader.too_long  # 1,006 bytes and no end
    assert reader.feed(b"\n\n" + first) == []  # nothing more once stopped
    whole = EventReader(max_event_bytes=1000)  # a whole event in one read is capped too
    assert [e.raw for e in whole.feed(first + b"data: " + b" " * 1000 + b"\n\n" + first)] == [
        first]  # fmt: skip
    assert whole.too_long
