"""Shared helpers for the market data tests: random engine command streams and a
client-side book that applies snapshot + delta frames."""

from __future__ import annotations

import sys
from typing import Any

from hypothesis import strategies as st

from market.engine import MatchingEngine
from market.instruments import make_instrument
from schemas.market import (
    AdvanceTime,
    AmendOrder,
    CancelOrder,
    Command,
    Depth,
    DepthLevel,
    Instrument,
    MassCancel,
    NewOrder,
    OrderType,
    SetTradingState,
    Side,
    StpMode,
    TimeInForce,
    TradingState,
)
from schemas.stream import book_checksum

SYM_A = "llama-3.1-70b/2026-12-01T00Z/1h"
SYM_B = "mistral-7b/2026-12-01T01Z/30m"
LOT = 1_000
TICK = 5
OWNERS = ("alice", "bob", "carol")


def instrument(symbol: str) -> Instrument:
    return make_instrument(symbol, lot_size=LOT, tick_size=TICK, price_min=100, price_max=200)


def engine() -> MatchingEngine:
    return MatchingEngine([instrument(SYM_A), instrument(SYM_B)])


def full_depth(eng: MatchingEngine, symbol: str) -> Depth:
    return eng.book(symbol).depth(sys.maxsize)


# A price range narrow enough that orders cross often.
prices = st.integers(20, 40).map(lambda n: n * TICK)
lots = st.integers(1, 6).map(lambda n: n * LOT)


@st.composite
def command_lists(draw: st.DrawFn, max_size: int = 60) -> list[Command]:
    """Commands over two instruments: every order type and time in force, STP
    modes, cancels and amends of (mostly) existing orders by their owner, mass
    cancels, halts, expiries; time only moves forward. Now and then an off-lot
    quantity or a wrong owner, so rejects appear too."""
    n = draw(st.integers(1, max_size))
    t = 1_000
    placed: list[tuple[int, str, str]] = []  # (order id, owner, symbol)
    out: list[Command] = []
    for _ in range(n):
        t += draw(st.integers(0, 3))
        sym = draw(st.sampled_from((SYM_A, SYM_A, SYM_A, SYM_B)))
        owner = draw(st.sampled_from(OWNERS))
        kind = draw(st.integers(0, 39))
        if kind >= 22 and placed and draw(st.integers(0, 9)):
            order_id, owner, sym = draw(st.sampled_from(placed))
        else:
            order_id = draw(st.integers(1, len(placed) + 1))
        if kind < 22:
            order_type = draw(st.sampled_from((OrderType.LIMIT,) * 4 + (OrderType.MARKET,)))
            if order_type is OrderType.MARKET:
                tif = draw(st.sampled_from((TimeInForce.IOC, TimeInForce.FOK)))
                price = draw(st.none() | prices)
            else:
                tif = draw(
                    st.sampled_from(
                        (TimeInForce.GTC,) * 3 + (TimeInForce.IOC, TimeInForce.FOK, TimeInForce.GTD)
                    )
                )
                price = draw(prices)
            expire_at = t + draw(st.integers(1, 8)) if tif is TimeInForce.GTD else None
            quantity = draw(lots) if draw(st.integers(0, 19)) else LOT + 1
            order_id = len(placed) + 1
            placed.append((order_id, owner, sym))
            out.append(
                NewOrder(
                    instrument=sym,
                    order_id=order_id,
                    owner=owner,
                    side=draw(st.sampled_from(Side)),
                    quantity=quantity,
                    time=t,
                    price=price,
                    order_type=order_type,
                    tif=tif,
                    expire_at=expire_at,
                    post_only=draw(st.integers(0, 3)) == 0
                    if tif in (TimeInForce.GTC, TimeInForce.GTD) and order_type is OrderType.LIMIT
                    else False,
                    stp=draw(st.sampled_from(StpMode)),
                )
            )  # fmt: skip
        elif kind < 28:
            out.append(CancelOrder(instrument=sym, order_id=order_id, owner=owner, time=t))
        elif kind < 35:
            out.append(
                AmendOrder(
                    instrument=sym,
                    order_id=order_id,
                    owner=owner,
                    time=t,
                    price=draw(st.none() | prices),
                    quantity=draw(st.none() | lots),
                )
            )
        elif kind < 37:
            t += draw(st.integers(0, 5))
            out.append(AdvanceTime(time=t))
        elif kind < 39:
            out.append(
                MassCancel(
                    time=t,
                    owner=draw(st.none() | st.sampled_from(OWNERS)),
                    instrument=draw(st.none() | st.just(sym)),
                )
            )
        else:
            state = draw(st.sampled_from((TradingState.HALTED, TradingState.OPEN)))
            out.append(SetTradingState(instrument=sym, state=state, time=t))
    return out


class ChecksumMismatch(AssertionError):
    """The rebuilt book's checksum is not the message's: the client's book drifted."""


class ClientBook:
    """What a websocket client does: a snapshot, then deltas, checking the chain and,
    after each message, the book's checksum (`schemas.stream.book_checksum`)."""

    def __init__(self) -> None:
        self.seq: int | None = None
        self.bids: dict[int, tuple[int, int]] = {}
        self.asks: dict[int, tuple[int, int]] = {}
        self.checked = 0  # messages whose checksum matched

    def checksum(self) -> int:
        bids = [(p, self.bids[p][0]) for p in sorted(self.bids, reverse=True)]
        asks = [(p, self.asks[p][0]) for p in sorted(self.asks)]
        return book_checksum(bids, asks)

    def on_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "snapshot":
            self.seq = msg["seq"]
            self.bids = {p: (q, n) for p, q, n in msg["bids"]}
            self.asks = {p: (q, n) for p, q, n in msg["asks"]}
        elif msg["type"] == "delta":
            assert self.seq is not None, "delta before snapshot"
            assert msg["prev_seq"] == self.seq, f"gap: {msg['prev_seq']} after {self.seq}"
            assert msg["seq"] >= self.seq
            self.seq = msg["seq"]
            for side, levels in ((self.bids, msg["bids"]), (self.asks, msg["asks"])):
                for p, q, n in levels:
                    if q == 0:
                        assert n == 0
                        del side[p]
                    else:
                        side[p] = (q, n)
        if msg["type"] in ("snapshot", "delta"):
            if self.checksum() != msg["checksum"]:
                raise ChecksumMismatch(f"book checksum differs at seq {msg['seq']}")
            self.checked += 1

    def depth(self, symbol: str) -> Depth:
        assert self.seq is not None
        return Depth(
            instrument=symbol,
            seq=self.seq,
            bids=[DepthLevel(p, *self.bids[p]) for p in sorted(self.bids, reverse=True)],
            asks=[DepthLevel(p, *self.asks[p]) for p in sorted(self.asks)],
        )
