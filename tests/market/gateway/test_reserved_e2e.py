"""A provider's own report or a buyer's voucher may not spend the tokens a metered call
still streaming has reserved, end to end on `tokex serve` (one process, and the desk in
the sequencer process of `serve --workers 2`): sent mid-stream for the whole free
entitlement it is refused 422 `entitlement_exceeded`, and the call, once it ends, is
charged and its provider paid; what is left free after it can be reported."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import openai
import pytest

from market.client import TokexApiError
from tests.market.gateway.gateway_support import MODEL, RECEIPTS, Market, open_market
from tests.market.gateway.test_desk_server import TWO, both_gateways_up
from tests.support.upstream import Upstream

CHAT = [{"role": "user", "content": "one two three"}]  # 3 prompt tokens upstream
TOKENS = 1_000


async def spend(m: Market, how: str, tokens: int, tag: str) -> object:
    """The provider's claim on `tokens` of the buyer's entitlement: a report or a voucher."""
    if how == "report":
        return await m.provider.report_delivery(f"offline-{tag}", m.symbol, m.buyer_id, tokens)
    v = m.buyer.sign_voucher(m.buyer_id, m.provider_id, m.symbol, tokens, int(tag))
    return await m.provider.submit_voucher(v)


async def charged(db_url: str, timeout_s: float = 10.0) -> list[asyncpg.Record]:
    """The gateway's receipts, once there is one (its charge has reached the ledger)."""
    deadline = time.monotonic() + timeout_s
    while True:
        conn = await asyncpg.connect(db_url)
        try:
            rows = await conn.fetch(f"SELECT tokens, charged_in AS transaction_id FROM {RECEIPTS}")
        finally:
            await conn.close()
        if (rows and all(r["transaction_id"] for r in rows)) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(
    ("how", "args"), [("report", ()), ("voucher", ()), ("report", TWO)],
    ids=["report", "voucher", "report-workers"],
)  # fmt: skip
async def test_a_report_or_voucher_mid_stream_leaves_the_calls_tokens_to_its_charge(
    db_url: str, tmp_path: Path, upstream: Upstream, how: str, args: tuple[str, ...]
) -> None:
    async for m in open_market(db_url, tmp_path, upstream, tokens=TOKENS, extra_args=args):
        if args:
            await both_gateways_up(m.proc)
        upstream.chunk_delay_s = 0.05
        cash_before = await m.provider_cash()
        client = openai.AsyncOpenAI(base_url=m.openai_url, api_key=await m.key(), max_retries=0,
                                    timeout=20)  # fmt: skip
        stream = await client.chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=20, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = stream.__aiter__()
        await chunks.__anext__()  # streaming now: its tokens are reserved
        free = (await m.entitlement()).entitlement
        assert free == TOKENS  # nothing charged yet
        with pytest.raises(TokexApiError) as refused:
            await spend(m, how, free, "1")
        assert (refused.value.status, refused.value.code) == (422, "entitlement_exceeded")
        assert "reserved by gateway calls in flight" in refused.value.message
        rest = [c async for c in chunks]
        assert rest[-1].usage is not None and rest[-1].usage.total_tokens == 23
        (receipt,) = await charged(db_url)
        assert receipt["tokens"] == 23 and receipt["transaction_id"] is not None
        await m.settled()
        assert (await m.entitlement()).entitlement == TOKENS - 23
        assert await m.provider_cash() > cash_before  # paid for what it served
        # nothing in flight now: what is left free can be claimed whole
        await spend(m, how, TOKENS - 23, "2")
        assert (await m.entitlement()).entitlement == 0
        assert "gateway charge refused" not in m.proc.log_path.read_text()
