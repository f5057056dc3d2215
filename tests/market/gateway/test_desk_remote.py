"""A reserve whose answer a gateway process never got (`tokex serve --workers N`): the desk
in the sequencer process may have reserved it all the same, and the gateway's release of
it must leave nothing held there (the entitlement, the key's budget, the account's place
in flight, the endpoint's), whether the desk decided it before the release arrived,
after, or saw the release before the reserve itself. On a real sequencer, PostgreSQL
and an embedded NATS (the fixtures of `test_desk`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from market.gateway import desk_wire as wire
from market.gateway import metering, routing
from market.gateway.desk_remote import RemoteDesk, request
from market.gateway.desk_server import CallReleased, DeskServer, ReleasedEarly
from market.gateway.errors import TooManyInFlight
from market.sequencer.remote import SequencerUnreachable
from market.sequencer.wire import encode
from tests.market.gateway import test_desk
from tests.market.gateway.gateway_support import MODEL
from tests.market.gateway.test_desk import WANTS, rid

seq, server = test_desk.seq, test_desk.server  # its fixtures: a desk served over NATS

ONE_SLOT = [routing.Endpoint("p1", "e1", 1)]  # one call in flight at most
WIDE = [routing.Endpoint("p1", "e2", 10)]
SMALL = metering.Demand(prompt_estimate=10, max_tokens=10)  # reserves 20
BUDGET = 800  # of key k; WANTS reserves 400 of it and of b1's 1,000 tokens
ALL_OF_K = metering.Demand(prompt_estimate=100, max_tokens=700)  # reserves 800


class Gate:
    """The desk decides a reserve only once `open` is set, as when it waits for a commit."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.arrived = 0


@pytest.fixture
def gate(server: DeskServer, monkeypatch: pytest.MonkeyPatch) -> Gate:
    g = Gate()
    reserve = server.desk.reserve

    async def after_the_gate(*args: Any, **kwargs: Any) -> Any:
        g.arrived += 1
        await g.open.wait()
        return await reserve(*args, **kwargs)

    monkeypatch.setattr(server.desk, "reserve", after_the_gate)
    return g


async def until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not done():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def nothing_held(server: DeskServer) -> None:
    """Everything a kept reservation of WANTS on ONE_SLOT by key k would hold is free."""
    assert server.calls == 0
    gw = RemoteDesk(server.nats, "gw9-check")
    route, _ = await gw.reserve(rid(), "b1", "k-other", None, MODEL, SMALL, WIDE)
    assert route.available == 1000  # the entitlement, whole (else 600)
    _, plan = await gw.reserve(rid(), "b1", "k", BUDGET, MODEL, ALL_OF_K, ONE_SLOT)
    assert plan.reserved == BUDGET  # the key's budget, whole (else 400), and e1's slot
    for _ in range(2):  # the account's 4 places in flight: 2 taken above
        await gw.reserve(rid(), "b1", "k-other", None, MODEL, SMALL, WIDE)
    with pytest.raises(TooManyInFlight):
        await gw.reserve(rid(), "b1", "k-other", None, MODEL, SMALL, WIDE)


@pytest.mark.parametrize("decided", ["before its release", "after its release"])
async def test_a_reserve_answered_too_late_is_released_at_the_desk(
    server: DeskServer,
    gate: Gate,
    decided: str,
) -> None:
    gw = RemoteDesk(server.nats, "gw0-late", timeout_s=0.2)
    with pytest.raises(SequencerUnreachable):  # the buyer's 503
        await gw.reserve(rid(), "b1", "k", BUDGET, MODEL, WANTS, ONE_SLOT)
    if decided == "before its release":
        gate.open.set()
        await until(lambda: server.calls == 1)  # reserved, answered to nobody
    assert await gw._send()  # the gateway's release of it
    gate.open.set()
    await until(lambda: not server._tasks)
    await nothing_held(server)


async def test_a_reserve_cancelled_while_it_waited_is_released_at_the_desk(
    server: DeskServer,
    gate: Gate,
) -> None:
    gw = RemoteDesk(server.nats, "gw0-cut")
    waiting = asyncio.create_task(gw.reserve(rid(), "b1", "k", BUDGET, MODEL, WANTS, ONE_SLOT))
    await until(lambda: gate.arrived == 1)
    waiting.cancel()  # the buyer went away
    with pytest.raises(asyncio.CancelledError):
        await waiting
    gate.open.set()
    await until(lambda: server.calls == 1)
    assert await gw._send()
    await nothing_held(server)


async def test_a_release_that_arrives_before_its_reserve_leaves_nothing_reserved(
    server: DeskServer,
) -> None:
    call = rid()
    released = encode(wire.ReleaseRequest("gw0-early", [call]))
    await request(server.nats, wire.RELEASE, released, 1.0)
    gw = RemoteDesk(server.nats, "gw0-early")
    with pytest.raises(CallReleased):  # the reserve, overtaken on its way by its release
        await gw.reserve(call, "b1", "k", BUDGET, MODEL, WANTS, ONE_SLOT)
    await nothing_held(server)
    assert len(server.released_early) == 0  # its reserve came: forgotten


def test_releases_before_their_reserves_are_remembered_a_bounded_time_and_number() -> None:
    early = ReleasedEarly(ttl_s=60.0, size=2)
    for n in range(3):
        early.add("gw0", f"r{n}")
    assert len(early) == 2
    assert not early.take("gw0", "r0")  # the oldest, forgotten for the newer
    assert not early.take("gw1", "r1")  # per gateway process
    assert early.take("gw0", "r2") and not early.take("gw0", "r2")  # once
    brief = ReleasedEarly(ttl_s=0.0, size=10)
    brief.add("gw0", "r")
    assert not brief.take("gw0", "r") and len(brief) == 0
