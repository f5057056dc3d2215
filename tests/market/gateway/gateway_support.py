"""A market with a live instrument, a provider's endpoint on the stand-in upstream and a
buyer holding entitlement, on a real `tokex serve`; the buyer's inference key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from market.clearing.rules import Delivered
from market.client import TokexClient
from market.instruments import format_symbol
from schemas.accounts import Role
from schemas.market import Side
from schemas.trading import CreateInstrument, EntitlementView, PlaceOrder
from tests.support.server import ServerProcess, operator_client
from tests.support.upstream import Upstream

#: `gateway_receipts` with the delivery that charged each receipt as its `transaction_id`
#: (NULL: not charged yet, or charged nothing). The receipt journal writes a receipt
#: before its charge, which links it (`gateway_delivery_receipts`); use as a table name.
RECEIPTS = (
    "(SELECT r.*, coalesce(l.transaction_id, r.transaction_id) AS charged_in"
    " FROM gateway_receipts r LEFT JOIN gateway_delivery_receipts l USING (receipt_id))"
    " AS gateway_receipts"
)

MODEL = "llama-3.1-70b"
PRICE = 3  # cash per token (lot size 1)
FEE_BPS = 250
ENV = {
    "TOKEX_ENDPOINT_ALLOW_HOSTS": "127.0.0.1,localhost",
    "TOKEX_GATEWAY_FLUSH_MS": "100",
    "TOKEX_GATEWAY_UPSTREAM_TIMEOUT_S": "2",
    "TOKEX_ENDPOINT_HEALTH_INTERVAL_S": "3600",
    "TOKEX_RATE_LIMIT": "1000",
    "TOKEX_RATE_BURST": "1000",
    "TOKEX_GATEWAY_RATE_LIMIT": "1000",
    "TOKEX_GATEWAY_RATE_BURST": "1000",
}


def live_symbol() -> str:
    """An instrument whose one-day window began at the top of this hour."""
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return format_symbol(MODEL, int(hour.timestamp()), 86_400)


@dataclass
class Market:
    proc: ServerProcess
    operator: TokexClient
    provider: TokexClient
    buyer: TokexClient
    provider_id: str
    buyer_id: str
    symbol: str
    upstream: Upstream

    @property
    def openai_url(self) -> str:
        return self.proc.base_url + "/openai/v1"

    async def entitlement(self) -> EntitlementView:
        (mine,) = [e for e in await self.buyer.entitlements() if e.instrument == self.symbol]
        return mine

    async def delivered(self) -> Delivered:
        """What the provider delivered to the buyer so far: the delivery rule rounds the
        next delivery's release and fee on these totals (`rules.delivery_split`)."""
        mine = [d for d in await self.provider.deliveries(self.symbol) if d.buyer == self.buyer_id]
        return Delivered(
            tokens=sum(d.tokens for d in mine),
            released=sum(d.released for d in mine),
            fee=sum(d.fee for d in mine),
        )

    async def provider_cash(self) -> int:
        for b in await self.provider.balances():
            if b.kind == "cash":
                return b.total
        return 0

    async def key(self, **scope: object) -> str:
        made = await self.buyer.request("POST", "/v1/inference-keys", json=scope)
        secret: str = made["secret"]
        return secret

    async def settled(self, timeout_s: float = 10.0) -> None:
        """Wait until the gateway's charges have reached the ledger (its flushes)."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            now = (await self.entitlement()).entitlement
            if now == last:
                return
            last = now
            await asyncio.sleep(0.4)  # several flushes of 100 ms
        raise AssertionError("charges still moving")


async def open_market(
    db_url: str, tmp_path: Path, upstream: Upstream, tokens: int, completion_weight: int = 1,
    env: dict[str, str] | None = None, extra_args: tuple[str, ...] = (),
) -> AsyncIterator[Market]:  # fmt: skip
    settings = {**ENV, **(env or {})}
    server = ServerProcess(database_url=db_url, data_dir=tmp_path, env=settings,
                           extra_args=extra_args)  # fmt: skip
    proc = await asyncio.to_thread(server.start)
    operator = await operator_client(db_url, proc.base_url)
    try:
        symbol = live_symbol()
        await operator.create_instrument(CreateInstrument(
            symbol=symbol, lot_size=1, tick_size=1, price_min=1, price_max=1000,
            provider_fee_bps=FEE_BPS, completion_weight=completion_weight,
            allow_started=True,
        ))  # fmt: skip
        p = await operator.create_account(Role.PROVIDER, "provider")
        b = await operator.create_account(Role.BUYER, "buyer")
        provider, buyer = operator.as_account(p), operator.as_account(b)
        await provider.list_capacity("cap", symbol, tokens)
        await operator.deposit("dep", b.account_id, 10 * tokens * PRICE)
        sell = PlaceOrder(client_order_id="ask", instrument=symbol, side=Side.SELL,
                          quantity=tokens, price=PRICE)  # fmt: skip
        await provider.place_order(sell)
        buy = PlaceOrder(client_order_id="bid", instrument=symbol, side=Side.BUY,
                         quantity=tokens, price=PRICE)  # fmt: skip
        await buyer.place_order(buy)
        endpoint = {"endpoint_id": "e1", "model": MODEL, "base_url": upstream.base_url,
                    "credential": "sk-up", "max_concurrency": 256}  # fmt: skip
        await provider.request("POST", "/v1/endpoints", json=endpoint)
        yield Market(proc, operator, provider, buyer, p.account_id, b.account_id, symbol, upstream)
    finally:
        await operator.aclose()
        await asyncio.to_thread(proc.stop)
