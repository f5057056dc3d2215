"""The matching engine: one `OrderBook` per instrument, commands routed by symbol.

Pure like the books: the sequencer feeds it commands (with times and order ids
already assigned) and takes the events. Commands that span instruments
(`MassCancel` without an instrument, `AdvanceTime`) visit books in symbol order,
so their events come in a deterministic order; each event carries its own
book's seq.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Final

import msgspec

from market.book import OrderBook
from market.book_select import BOOK
from market.errors import DuplicateInstrument, InvalidSnapshot, UnknownInstrument
from schemas.market import (
    AdvanceTime,
    AmendOrder,
    CancelOrder,
    Command,
    CommandKind,
    EngineSnapshot,
    Event,
    Instrument,
    MassCancel,
    NewOrder,
    OpenOrder,
    OrderRejected,
    RejectReason,
    SetTradingState,
)

ENGINE_SNAPSHOT_VERSION: Final = 1

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(EngineSnapshot)


class MatchingEngine:
    """All books. `process(command) -> events`."""

    __slots__ = ("_books",)

    def __init__(self, instruments: list[Instrument] | None = None) -> None:
        self._books: dict[str, OrderBook] = {}
        for instrument in instruments or ():
            self.add_instrument(instrument)

    def add_instrument(self, instrument: Instrument) -> OrderBook:
        """List a new instrument (validated) with an empty book."""
        if instrument.symbol in self._books:
            raise DuplicateInstrument(f"instrument {instrument.symbol!r} already exists")
        book = BOOK(instrument)  # the compiled book when built (market.book_select)
        self._books[instrument.symbol] = book
        return book

    def book(self, symbol: str) -> OrderBook:
        try:
            return self._books[symbol]
        except KeyError:
            raise UnknownInstrument(f"unknown instrument {symbol!r}") from None

    def books(self) -> Iterator[OrderBook]:
        """Books in symbol order."""
        for symbol in sorted(self._books):
            yield self._books[symbol]

    def open_orders(self, owner: str) -> list[OpenOrder]:
        """An owner's open orders in every book (symbol order, then order id)."""
        return [o for book in self.books() for o in book.open_orders(owner)]

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._books

    def process(self, cmd: Command) -> list[Event]:
        """Apply one command; return its events in order."""
        # the order and cancel paths are hot: an exact type test is the cheapest, and
        # a subscript in a `try` (free unless it raises) is cheaper than `dict.get`
        if type(cmd) is NewOrder:
            try:
                return self._books[cmd.instrument].new_order(cmd)
            except KeyError:
                if cmd.instrument in self._books:
                    raise  # a KeyError from inside the book is a bug, not an unknown symbol
                return [self._unknown(cmd)]
        if type(cmd) is CancelOrder:
            try:
                return self._books[cmd.instrument].cancel_order(cmd)
            except KeyError:
                if cmd.instrument in self._books:
                    raise
                return [self._unknown(cmd)]
        if type(cmd) is AmendOrder:
            try:
                return self._books[cmd.instrument].amend_order(cmd)
            except KeyError:
                if cmd.instrument in self._books:
                    raise
                return [self._unknown(cmd)]
        if isinstance(cmd, MassCancel):
            if cmd.instrument is not None:
                book = self._books.get(cmd.instrument)
                if book is None:
                    return [self._unknown(cmd)]
                return book.mass_cancel(cmd.time, cmd.owner)
            events: list[Event] = []
            for book in self.books():
                events.extend(book.mass_cancel(cmd.time, cmd.owner))
            return events
        if isinstance(cmd, SetTradingState):
            book = self._books.get(cmd.instrument)
            if book is None:
                return [self._unknown(cmd)]
            return book.set_trading_state(cmd.state, cmd.time)
        if isinstance(cmd, AdvanceTime):
            events = []
            for book in self.books():
                events.extend(book.advance_time(cmd.time))
            return events
        raise TypeError(f"not a market command: {type(cmd).__name__}")

    @staticmethod
    def _unknown(cmd: Command) -> OrderRejected:
        """A reject outside any book: seq 0."""
        if isinstance(cmd, NewOrder):
            return OrderRejected(
                0, cmd.time, cmd.instrument, CommandKind.NEW, cmd.order_id, cmd.owner,
                cmd.client_order_id, RejectReason.UNKNOWN_INSTRUMENT,
            )  # fmt: skip
        if isinstance(cmd, CancelOrder | AmendOrder):
            command = CommandKind.CANCEL if isinstance(cmd, CancelOrder) else CommandKind.AMEND
            return OrderRejected(
                0, cmd.time, cmd.instrument, command, cmd.order_id, cmd.owner, None,
                RejectReason.UNKNOWN_INSTRUMENT,
            )  # fmt: skip
        if isinstance(cmd, MassCancel):
            return OrderRejected(
                0, cmd.time, cmd.instrument or "", CommandKind.MASS_CANCEL, None, cmd.owner,
                None, RejectReason.UNKNOWN_INSTRUMENT,
            )  # fmt: skip
        assert isinstance(cmd, SetTradingState)
        return OrderRejected(
            0, cmd.time, cmd.instrument, CommandKind.SET_STATE, None, None, None,
            RejectReason.UNKNOWN_INSTRUMENT,
        )  # fmt: skip

    # ------------------------------------------------------------------ state

    def snapshot(self) -> bytes:
        snap = EngineSnapshot(
            version=ENGINE_SNAPSHOT_VERSION,
            books=[book.to_snapshot() for book in self.books()],
        )
        return _encoder.encode(snap)

    def state_hash(self) -> bytes:
        """SHA-256 over the books' state hashes in symbol order."""
        h = hashlib.sha256()
        for book in self.books():
            h.update(book.state_hash())
        return h.digest()

    @classmethod
    def restore(cls, data: bytes) -> MatchingEngine:
        try:
            snap = _decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise InvalidSnapshot(f"cannot decode engine snapshot: {exc}") from exc
        if snap.version != ENGINE_SNAPSHOT_VERSION:
            raise InvalidSnapshot(f"unsupported engine snapshot version {snap.version}")
        engine = cls()
        for book_snap in snap.books:
            if book_snap.instrument.symbol in engine._books:
                raise InvalidSnapshot(f"instrument {book_snap.instrument.symbol!r} twice")
            engine._books[book_snap.instrument.symbol] = BOOK.from_snapshot(book_snap)
        return engine
