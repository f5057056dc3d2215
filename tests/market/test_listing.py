"""Listing an instrument through the sequencer, on a real PostgreSQL: what is refused."""

from __future__ import annotations

import pytest

from market.errors import InvalidInstrument
from market.sequencer import CreateInstrumentOp, DepositOp, ListingOp, Sequencer
from schemas.market import Side
from schemas.trading import CreateInstrument, Deposit, Listing, PlaceOrder
from tests.market.test_sequencer import Clock, place


async def test_a_symbol_too_long_for_its_ledger_accounts_is_refused_at_listing(
    db_url: str,
) -> None:
    """Found in review: a valid 90-character symbol listed and took orders, but its
    escrow account's name passed 96 characters, so its first fill was refused by the
    ledger and every batch with one was answered 503. Now the listing is refused."""
    s = await Sequencer.open(db_url, clock=Clock())
    try:
        long_symbol = "m" * 64 + "/2026-12-01T00:30Z/100001m"
        with pytest.raises(InvalidInstrument) as refused:
            await s.submit(CreateInstrumentOp(CreateInstrument(
                symbol=long_symbol, lot_size=1, tick_size=1, price_min=1, price_max=100,
            )))  # fmt: skip
        assert "too long" in refused.value.message
        fits = "m" * 64 + "/2026-12-01T00:30Z/1h"
        await s.submit(CreateInstrumentOp(CreateInstrument(
            symbol=fits, lot_size=1, tick_size=1, price_min=1, price_max=100,
        )))  # fmt: skip
        await s.submit(DepositOp(Deposit(deposit_id="d1", account_id="b1", amount=1000)))
        await s.submit(ListingOp("p1", Listing(listing_id="l1", instrument=fits, quantity=10)))
        await place(s, "p1", PlaceOrder(client_order_id="a", instrument=fits, side=Side.SELL,
                                        quantity=10, price=5))  # fmt: skip
        bid = await place(s, "b1", PlaceOrder(client_order_id="b", instrument=fits,
                                              side=Side.BUY, quantity=10, price=5))  # fmt: skip
        assert bid.status == "filled"
    finally:
        await s.close()
