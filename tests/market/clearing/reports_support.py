"""A small market with real trades (through the sequencer) and hand-made deliveries and a
window close (through the ledger writer), for the report tests.

Accounts are real (`create_account`), so the same activity serves signed HTTP requests.

Trades (lot 1,000 tokens; maker 10 bps, taker 20 bps, provider fee 100 bps):
    b1 takes 20,000 from p1 at 5,000     notional 100,000  taker fee 200
    b2 takes 10,000 from p1 at 5,000     notional  50,000  taker fee 100
    b2 takes 20,000 from p2 at 5,500     notional 110,000  taker fee 220
    b1 (maker) gets 5,000 from p2 at 4,800  notional 24,000  maker fee 24
Then, by the ledger writer (`market.clearing.rules.delivery` and `close_entitlement`):
    delivery b1@p1: 15,000 tokens, escrow 75,000 -> p1 74,250 + fee 750    (day 1, +1 h)
    delivery b2@p2: 20,000 tokens, escrow 110,000 -> p2 108,900 + fee 1,100 (day 2)
    close_refund b1@p1: 5,000 tokens burned, 25,000 refunded to b1          (day 2, +1 h)
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.writer import Ledger
from market.accounts import create_account
from market.clearing import rules as settlement
from market.sequencer import CreateInstrumentOp, DepositOp, ListingOp, PlaceOp, Sequencer
from schemas.accounts import Role
from schemas.market import Side
from schemas.trading import CreateInstrument, Deposit, Listing, OrderView, PlaceOrder

SYM = "llama-3.1-70b/2027-02-01T00Z/1h"  # a window after every time used here
LOT = 1000
T0 = 1_800_000_000_000  # 2027-01-15T08:00:00.000Z
HOUR = 3_600_000
DAY = 24 * HOUR
TERMS = settlement.Terms(
    symbol=SYM, lot_size=LOT, currency="USD", maker_fee_bps=10, taker_fee_bps=20,
    provider_fee_bps=100,
)  # fmt: skip


@dataclass
class Key:
    account_id: str
    key_id: str
    private_key: Ed25519PrivateKey


@dataclass
class Activity:
    keys: dict[str, Key]  # operator, auditor, b1, b2, p1, p2

    def id(self, name: str) -> str:
        return self.keys[name].account_id


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


async def _accounts(db_url: str) -> dict[str, Key]:
    roles = {
        "operator": Role.OPERATOR, "auditor": Role.AUDITOR, "b1": Role.BUYER,
        "b2": Role.BUYER, "p1": Role.PROVIDER, "p2": Role.PROVIDER,
    }  # fmt: skip
    keys: dict[str, Key] = {}
    conn = await asyncpg.connect(db_url)
    try:
        for name, role in roles.items():
            created, private = await create_account(conn, role, name, None)
            assert private is not None
            keys[name] = Key(created.account_id, created.key_id, private)
    finally:
        await conn.close()
    return keys


async def setup_market(seq: Sequencer, buyer: str, provider: str) -> None:
    """The instrument, a deposit for `buyer` and a listing for `provider`."""
    await seq.submit(
        CreateInstrumentOp(
            CreateInstrument(
                symbol=SYM, lot_size=LOT, tick_size=5, price_min=5, price_max=100_000,
                maker_fee_bps=10, taker_fee_bps=20, provider_fee_bps=100,
            )
        )
    )  # fmt: skip
    await seq.submit(DepositOp(Deposit(deposit_id="d", account_id=buyer, amount=1_000_000)))
    await seq.submit(ListingOp(provider, Listing(listing_id="l", instrument=SYM, quantity=100_000)))


async def build_activity(db_url: str) -> Activity:
    keys = await _accounts(db_url)
    a = Activity(keys)
    b1, b2, p1, p2 = a.id("b1"), a.id("b2"), a.id("p1"), a.id("p2")
    clock = Clock()
    seq = await Sequencer.open(db_url, clock=clock)
    try:
        await seq.submit(
            CreateInstrumentOp(
                CreateInstrument(
                    symbol=SYM, lot_size=LOT, tick_size=5, price_min=5, price_max=100_000,
                    maker_fee_bps=10, taker_fee_bps=20, provider_fee_bps=100,
                )
            )
        )  # fmt: skip
        for buyer in (b1, b2):
            await seq.submit(
                DepositOp(Deposit(deposit_id=f"d-{buyer}", account_id=buyer, amount=1_000_000))
            )
        for provider in (p1, p2):
            await seq.submit(
                ListingOp(provider, Listing(listing_id="l1", instrument=SYM, quantity=100_000))
            )

        async def place(owner: str, coid: str, side: Side, qty: int, price: int) -> OrderView:
            clock.now += 1_000
            req = PlaceOrder(
                client_order_id=coid, instrument=SYM, side=side, quantity=qty, price=price
            )
            result = await seq.submit(PlaceOp(owner, req))
            assert isinstance(result, OrderView) and result.status != "rejected", result
            return result

        await place(p1, "s1", Side.SELL, 30_000, 5_000)
        await place(b1, "t1", Side.BUY, 20_000, 5_000)
        await place(p2, "s2", Side.SELL, 20_000, 5_500)
        await place(b2, "t2", Side.BUY, 30_000, 5_500)
        await place(b1, "m1", Side.BUY, 10_000, 4_800)
        await place(p2, "s3", Side.SELL, 5_000, 4_800)
    finally:
        await seq.close()

    ledger = await Ledger.open(db_url)
    try:
        d1, _ = settlement.delivery("r1", b1, p1, TERMS, 15_000, 20_000, 100_000, T0 + HOUR)
        d2, _ = settlement.delivery("r2", b2, p2, TERMS, 20_000, 20_000, 110_000, T0 + DAY)
        close = settlement.close_entitlement(
            "close:1", b1, p1, TERMS, 5_000, 25_000, T0 + DAY + HOUR
        )
        for tx in (d1, d2, close):
            (result,) = await ledger.apply_batch([tx])
            assert result.committed, result
    finally:
        await ledger.close()
    return a
