"""A small market on a running server: an instrument, a provider with capacity and a
buyer with cash, for end-to-end tests of the operating surface (metrics, logs, CLI)."""

from __future__ import annotations

from dataclasses import dataclass

from market.client import TokexClient
from schemas.accounts import Role
from schemas.market import Side
from schemas.trading import CreateInstrument, PlaceOrder
from tests.support.server import operator_client

SYMBOL = "llama-3.1-70b/2030-12-01T00Z/1h"  # far ahead: it stays open for the test


@dataclass
class SmallMarket:
    operator: TokexClient
    provider: TokexClient
    buyer: TokexClient
    provider_id: str
    buyer_id: str

    async def aclose(self) -> None:
        await self.operator.aclose()


async def small_market(db_url: str, base_url: str, *, cash: int = 1_000_000) -> SmallMarket:
    operator = await operator_client(db_url, base_url)
    await operator.create_instrument(
        CreateInstrument(
            symbol=SYMBOL, lot_size=1000, tick_size=5, price_min=5, price_max=100_000,
            taker_fee_bps=20,
        )
    )  # fmt: skip
    provider = await operator.create_account(Role.PROVIDER, "provider")
    buyer = await operator.create_account(Role.BUYER, "buyer")
    provider_client, buyer_client = operator.as_account(provider), operator.as_account(buyer)
    await provider_client.list_capacity("cap-1", SYMBOL, 100_000)
    await operator.deposit("dep-1", buyer.account_id, cash)
    return SmallMarket(
        operator, provider_client, buyer_client, provider.account_id, buyer.account_id
    )


def order(coid: str, side: Side, quantity: int, price: int) -> PlaceOrder:
    return PlaceOrder(
        client_order_id=coid, instrument=SYMBOL, side=side, quantity=quantity, price=price
    )
