"""The wire's time convention (`schemas.wire_time`): views of the engine's events, the
old request names accepted for a version, and no time field without its unit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from schemas.market import (
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderType,
    Side,
    StpMode,
    TimeInForce,
)
from schemas.stream import (
    EVENT_VIEWS,
    ClientMessage,
    OrderEvent,
    OrderMessage,
    ServerMessage,
    Subscribe,
    order_event_view,
)
from schemas.trading import CreateInstrument, PlaceOrder
from schemas.wire_time import DEPRECATED_FIELDS, unix_ms
from tests.support.wire_time import schema_names, untimed

RENAMED = {"time": "time_ms", "expire_at": "expire_at_ms"}

_ORDER = (
    b'{"client_order_id":"c-1","instrument":"m/2030-01-01T00Z/1h","side":"buy",'
    b'"quantity":1000,"price":100,"tif":"gtd",'
)


def test_every_websocket_frame_names_its_times_with_their_unit() -> None:
    _, schemas = msgspec.json.schema_components([ServerMessage, ClientMessage])
    deprecated = {(s, old) for s, names in DEPRECATED_FIELDS.items() for old in names}
    names = [(s, n) for s, n in schema_names(schemas) if (s, n) not in deprecated]
    assert names  # the walk saw the frames
    assert untimed(names) == []


def test_the_check_catches_a_time_without_its_unit() -> None:
    found = untimed([("View", "time"), ("View", "created_at"), ("View", "time_ms"),
                     ("View", "window_start_s"), ("View", "allow_started")])  # fmt: skip
    assert found == ["View: created_at", "View: time"]


@pytest.mark.parametrize("event_type", list(EVENT_VIEWS))
def test_an_order_event_view_is_the_engine_event_with_times_renamed(event_type: Any) -> None:
    view_type = EVENT_VIEWS[event_type]
    engine = [f.name for f in msgspec.structs.fields(event_type)]
    wire = [f.name for f in msgspec.structs.fields(view_type)]
    assert wire == [RENAMED.get(name, name) for name in engine]
    assert view_type.__struct_config__.tag == event_type.__struct_config__.tag


def test_an_order_frame_carries_the_events_values_under_the_wire_names() -> None:
    accepted = OrderAccepted(
        7, 1_900_000_000_123, "m/2030-01-01T00Z/1h", 42, "acc_1", "c-1", Side.BUY,
        OrderType.LIMIT, 100, 1000, TimeInForce.GTD, 1_900_000_060_000, False,
        StpMode.CANCEL_NEWEST,
    )  # fmt: skip
    frame = msgspec.json.decode(msgspec.json.encode(OrderMessage(event=order_event_view(accepted))))
    event = frame["event"]
    assert (frame["type"], event["type"]) == ("order", "accepted")
    assert event["time_ms"] == 1_900_000_000_123
    assert event["expire_at_ms"] == 1_900_000_060_000
    assert "time" not in event and "expire_at" not in event
    others: list[OrderEvent] = [
        OrderRejected(1, 5, "x", "new", 3, "o", "c", "qty_invalid"),
        OrderCancelled(2, 6, "x", 3, "o", Side.SELL, 10, 1, 0, "user"),
        OrderExpired(3, 7, "x", 3, "o", Side.SELL, 10, 1),
        OrderAmended(4, 8, "x", 3, "o", Side.SELL, 10, 11, 1, 1, False),
    ]
    for other in others:
        view = msgspec.structs.asdict(order_event_view(other))
        assert view.pop("time_ms") == other.time
        assert view == {k: v for k, v in msgspec.structs.asdict(other).items() if k != "time"}


def test_an_old_request_name_is_accepted_and_moved_to_the_new_field() -> None:
    order = msgspec.json.decode(_ORDER + b'"expire_at":1900000060000}', type=PlaceOrder)
    assert (order.expire_at_ms, order.expire_at) == (1_900_000_060_000, None)
    assert b"expire_at_ms" in msgspec.json.encode(order)
    assert b'"expire_at"' not in msgspec.json.encode(order)  # answers use the new name only
    listing = msgspec.json.decode(
        b'{"symbol":"m/2030-01-01T00Z/1h","lot_size":1,"tick_size":1,"price_min":1,'
        b'"price_max":9,"delivery_grace_seconds":60,"dispute_period_seconds":30}',
        type=CreateInstrument,
    )
    assert (listing.delivery_grace_s, listing.dispute_period_s) == (60, 30)
    sub = msgspec.json.decode(
        b'{"op":"subscribe","channel":"orders","timestamp":1900000000000}', type=ClientMessage
    )
    assert isinstance(sub, Subscribe) and sub.timestamp_ms == 1_900_000_000_000


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (_ORDER + b'"expire_at":1,"expire_at_ms":2}', PlaceOrder),
        (b'{"op":"subscribe","channel":"orders","timestamp":1,"timestamp_ms":2}', ClientMessage),
        (
            b'{"symbol":"s","lot_size":1,"tick_size":1,"price_min":1,"price_max":9,'
            b'"delivery_grace_s":5,"delivery_grace_seconds":6}',
            CreateInstrument,
        ),
    ],
)
def test_the_old_and_the_new_name_together_are_refused(body: bytes, kind: type) -> None:
    with pytest.raises(msgspec.ValidationError, match="deprecated name of"):
        msgspec.json.decode(body, type=kind, strict=True)


def test_unix_ms_is_exact_to_the_millisecond() -> None:
    moment = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(microseconds=123_999)
    assert unix_ms(moment) == 1_893_456_000_123
    assert unix_ms(datetime(1970, 1, 1, tzinfo=UTC)) == 0
