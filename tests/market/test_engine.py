"""The engine: routing by instrument, cross-instrument commands."""

from __future__ import annotations

import pytest

from market.engine import MatchingEngine
from market.errors import DuplicateInstrument, UnknownInstrument
from schemas.market import (
    AdvanceTime,
    AmendOrder,
    CancelOrder,
    Command,
    CommandKind,
    MassCancel,
    NewOrder,
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    RejectReason,
    SetTradingState,
    Side,
    TimeInForce,
    TradingState,
)
from tests.market.helpers import LOT, SYMBOL, instrument

OTHER = "mistral-large/2026-12-01T01Z/1h"


def _order(symbol: str, oid: int, owner: str = "a", **kw: object) -> NewOrder:
    fields: dict[str, object] = {"side": Side.BUY, "price": 500, "quantity": LOT, "time": 1_000}
    fields.update(kw)
    return NewOrder(instrument=symbol, order_id=oid, owner=owner, **fields)  # type: ignore[arg-type]


@pytest.fixture
def engine() -> MatchingEngine:
    return MatchingEngine([instrument(), instrument(OTHER)])


def test_commands_are_routed_and_sequenced_per_instrument(engine: MatchingEngine) -> None:
    [a] = engine.process(_order(SYMBOL, 1))
    [b] = engine.process(_order(OTHER, 2))
    [c] = engine.process(_order(SYMBOL, 3))
    assert isinstance(a, OrderAccepted) and (a.instrument, a.seq) == (SYMBOL, 1)
    assert isinstance(b, OrderAccepted) and (b.instrument, b.seq) == (OTHER, 1)
    assert isinstance(c, OrderAccepted) and c.seq == 2
    assert len(engine.book(SYMBOL)) == 2 and len(engine.book(OTHER)) == 1
    assert SYMBOL in engine and "nope" not in engine


def test_unknown_instrument_is_rejected_outside_any_book(engine: MatchingEngine) -> None:
    cmds: list[Command] = [
        _order("nope/2026-12-01T00Z/1h", 1, client_order_id="c"),
        CancelOrder(instrument="x", order_id=1, owner="a", time=1),
        AmendOrder(instrument="x", order_id=1, owner="a", time=1, quantity=LOT),
        MassCancel(instrument="x", owner="a", time=1),
        SetTradingState(instrument="x", state=TradingState.HALTED, time=1),
    ]
    kinds = [CommandKind.NEW, CommandKind.CANCEL, CommandKind.AMEND]
    kinds += [CommandKind.MASS_CANCEL, CommandKind.SET_STATE]
    for cmd, kind in zip(cmds, kinds, strict=True):
        [ev] = engine.process(cmd)
        assert isinstance(ev, OrderRejected)
        assert (ev.seq, ev.command, ev.reason) == (0, kind, RejectReason.UNKNOWN_INSTRUMENT)


def test_mass_cancel_across_instruments_in_symbol_order(engine: MatchingEngine) -> None:
    engine.process(_order(SYMBOL, 1, owner="a"))
    engine.process(_order(OTHER, 2, owner="a"))
    engine.process(_order(OTHER, 3, owner="b"))
    events = engine.process(MassCancel(owner="a", time=2_000))
    assert [(e.instrument, e.order_id) for e in events] == [  # type: ignore[union-attr]
        (SYMBOL, 1),
        (OTHER, 2),
    ]
    assert all(isinstance(e, OrderCancelled) for e in events)
    assert SYMBOL < OTHER
    events = engine.process(MassCancel(instrument=OTHER, time=2_001))
    assert [e.order_id for e in events] == [3]  # type: ignore[union-attr]


def test_advance_time_expires_in_every_book(engine: MatchingEngine) -> None:
    engine.process(_order(OTHER, 1, tif=TimeInForce.GTD, expire_at=1_500))
    engine.process(_order(SYMBOL, 2, tif=TimeInForce.GTD, expire_at=1_500))
    events = engine.process(AdvanceTime(time=1_500))
    assert [(type(e), e.instrument) for e in events] == [
        (OrderExpired, SYMBOL),
        (OrderExpired, OTHER),
    ]


def test_state_changes_are_per_instrument(engine: MatchingEngine) -> None:
    engine.process(SetTradingState(instrument=OTHER, state=TradingState.HALTED, time=1))
    [ev] = engine.process(_order(OTHER, 1))
    assert isinstance(ev, OrderRejected) and ev.reason == RejectReason.INSTRUMENT_HALTED
    [ev] = engine.process(_order(SYMBOL, 2))
    assert isinstance(ev, OrderAccepted)


def test_instrument_registry(engine: MatchingEngine) -> None:
    with pytest.raises(DuplicateInstrument):
        engine.add_instrument(instrument())
    with pytest.raises(UnknownInstrument) as err:
        engine.book("nope")
    assert err.value.code == "unknown_instrument"
    with pytest.raises(TypeError):
        engine.process("not a command")  # type: ignore[arg-type]


def test_open_orders_of_an_owner_across_books(engine: MatchingEngine) -> None:
    engine.process(_order(OTHER, 1, owner="a"))
    engine.process(_order(SYMBOL, 2, owner="a"))
    engine.process(_order(SYMBOL, 3, owner="b"))
    assert [(o.instrument, o.order_id) for o in engine.open_orders("a")] == [
        (SYMBOL, 2),
        (OTHER, 1),
    ]
