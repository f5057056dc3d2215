"""Reads of the sequencer's committed memory, as values: one struct per question.

A route that needs what only the sequencer holds in memory (the books, the
balances, the instruments and their settlements) asks it a `Query[T]`:
`await sequencer.ask(query)` returns a `T`. In one process (`Sequencer.ask`) that
is `committed()` then `query.answer(sequencer)`, with no await between; in a
gateway process (`market.sequencer.remote.RemoteSequencer`) the query travels to
the sequencer process, which answers it the same way. A query is a tagged
msgspec struct, so it is its own wire format, and `result_type` says how its
answer decodes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from market.errors import UnknownInstrument
from market.sequencer.ops import type_argument
from schemas.market import Depth
from schemas.trading import (
    BalanceView,
    BookLevel,
    BookView,
    EntitlementView,
    InstrumentView,
    SettlementView,
)

if TYPE_CHECKING:
    from market.sequencer.core import Sequencer

T = TypeVar("T")


class Query(msgspec.Struct, Generic[T], frozen=True, tag=True):
    """A question about committed memory whose answer is a `T`."""

    def answer(self, sequencer: Sequencer) -> T:
        raise TypeError(f"{type(self).__name__} has no answer")  # every subclass has one

    @classmethod
    def result_type(cls) -> Any:
        """T, from the class's `Query[T]` base (how its answer decodes)."""
        return type_argument(cls, Query)


class Marked(msgspec.Struct, Generic[T], frozen=True):
    """An answer and the number of commits it reflects (`Sequencer.commits`)."""

    commits: int
    value: T


class InstrumentsQuery(Query[list[InstrumentView]], frozen=True, tag="instruments"):
    def answer(self, sequencer: Sequencer) -> list[InstrumentView]:
        return sequencer.instruments()


class InstrumentQuery(Query[InstrumentView], frozen=True, tag="instrument"):
    symbol: str

    def answer(self, sequencer: Sequencer) -> InstrumentView:
        if self.symbol not in sequencer.engine:
            raise UnknownInstrument(f"unknown instrument {self.symbol!r}")
        return sequencer.instrument_view(self.symbol)


class BookQuery(Query[BookView], frozen=True, tag="book"):
    """Aggregated levels of one book, best first, and the last event seq they reflect."""

    instrument: str
    levels: int

    def answer(self, sequencer: Sequencer) -> BookView:
        if self.instrument not in sequencer.engine:
            raise UnknownInstrument(f"unknown instrument {self.instrument!r}")
        depth = sequencer.engine.book(self.instrument).depth(self.levels)
        return BookView(
            instrument=self.instrument,
            seq=depth.seq,
            bids=[BookLevel(lv.price, lv.quantity, lv.orders) for lv in depth.bids],
            asks=[BookLevel(lv.price, lv.quantity, lv.orders) for lv in depth.asks],
        )


class DepthsQuery(Query[list[Depth]], frozen=True, tag="depths"):
    """Every book at full depth: what a market data hub is loaded with."""

    def answer(self, sequencer: Sequencer) -> list[Depth]:
        return [book.depth(1_000_000) for book in sequencer.engine.books()]


class UntradedQuery(Query[bool], frozen=True, tag="untraded"):
    """Whether the instrument is listed and its book has had no event yet."""

    instrument: str

    def answer(self, sequencer: Sequencer) -> bool:
        engine = sequencer.engine
        return self.instrument in engine and engine.book(self.instrument).next_seq == 1


class BalancesQuery(Query[list[BalanceView]], frozen=True, tag="balances"):
    account_id: str

    def answer(self, sequencer: Sequencer) -> list[BalanceView]:
        return [
            BalanceView(
                asset=b.account.asset,
                kind=b.account.kind,
                account=b.account.owner,
                available=b.available,
                held=b.held,
                total=b.total,
            )
            for b in sequencer.balances_of(self.account_id)
        ]


class EntitlementsQuery(Query[Marked[list[EntitlementView]]], frozen=True, tag="entitlements"):
    account_id: str

    def answer(self, sequencer: Sequencer) -> Marked[list[EntitlementView]]:
        return Marked(sequencer.commits, sequencer.entitlements_of(self.account_id))


class CommitsQuery(Query[int], frozen=True, tag="commits"):
    """How many batches have committed (to tell whether anything committed in between)."""

    def answer(self, sequencer: Sequencer) -> int:
        return sequencer.commits


class SettlementsQuery(Query[list[SettlementView]], frozen=True, tag="settlements"):
    def answer(self, sequencer: Sequencer) -> list[SettlementView]:
        return sequencer.settlements()


class Status(msgspec.Struct, frozen=True):
    state: str
    healthy: bool
    ledger_size: int


class StatusQuery(Query[Status], frozen=True, tag="status"):
    """The sequencer's state and the ledger's size (for /health and /ready elsewhere)."""

    def answer(self, sequencer: Sequencer) -> Status:
        return Status(sequencer.state.value, sequencer.healthy, sequencer.ledger.size)


#: Every query, as the one union the sequencer process decodes.
AnyQuery = (
    InstrumentsQuery
    | InstrumentQuery
    | BookQuery
    | DepthsQuery
    | UntradedQuery
    | BalancesQuery
    | EntitlementsQuery
    | CommitsQuery
    | SettlementsQuery
    | StatusQuery
)
