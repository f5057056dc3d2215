"""Calls cut by a crash (market.gateway.progress): the charge of a call by its last progress
mark, marks and closes through the sequencer on a real PostgreSQL, marks riding with the
meter's group commits, the closing of the calls a restart finds (once), and the audit of
their receipts."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
import pytest

from ledger.log import MerkleLog
from market.clearing import rules as settlement
from market.gateway import metering, routing
from market.gateway.journal import ReceiptJournal
from market.gateway.keys import KeyGrant
from market.gateway.meter import Meter, Reservations
from market.gateway.progress import Progress, close_crashed, crash_receipt
from market.sequencer import CreateInstrumentOp, DepositOp, ListingOp, Sequencer
from market.sequencer.ops import GatewayChargeOp, GatewayProgressOp
from schemas.gateway import CallMark, Ending
from schemas.trading import CreateInstrument, Deposit, Listing
from tests.market.gateway.test_receipts import ORIGIN, SIGNER, exported, verified
from tests.market.test_delivery import LOT, SYM, Clock, trade
from tests.market.test_gateway_charge import receipt


def mark(chunks: int, usage: tuple[int, int] | None = None, **fields: object) -> CallMark:
    prompt, completion = usage if usage is not None else (None, None)
    values: dict[str, object] = dict(
        receipt_id="rcp_" + secrets.token_hex(12), key_id="ik_0000000000000000", buyer="b1",
        provider="p1", instrument=SYM, endpoint_id="e1", model="llama-3.1-70b",
        prompt_cap=40, completion_cap=20, completion_weight=1, started_ms=1_000,
        request_sha256=hashlib.sha256(b"q").digest(), chunks=chunks, prompt_tokens=prompt,
        completion_tokens=completion, cached_tokens=None if usage is None else 2,
        reasoning_tokens=None if usage is None else 0,
        response_sha256=hashlib.sha256(b"so far").digest(), marked_ms=1_250,
    )  # fmt: skip
    return CallMark(**{**values, **fields})  # type: ignore[arg-type]


def test_a_call_cut_by_a_crash_is_charged_by_the_cut_call_rule_on_its_last_mark() -> None:
    # No usage yet: the chunks passed on, one token each, no prompt.
    r = crash_receipt(mark(7))
    assert (r.prompt_tokens, r.completion_tokens, r.tokens) == (0, 7, 7)
    assert r.ending is Ending.CRASH and (r.started_ms, r.ended_ms) == (1_000, 1_250)
    assert r.response_sha256 == hashlib.sha256(b"so far").digest()
    # Never more than the reservation: chunks beyond the completion cap are not charged.
    assert crash_receipt(mark(500)).tokens == 20
    # The usage had arrived: it is charged (each part capped), whatever the chunks said.
    used = crash_receipt(mark(3, usage=(10, 12)))
    assert (used.prompt_tokens, used.completion_tokens, used.cached_tokens) == (10, 12, 2)
    assert used.tokens == 22
    assert crash_receipt(mark(3, usage=(400, 400))).tokens == 40 + 20
    # The instrument's completion weight counts as for any call.
    assert crash_receipt(mark(5, completion_weight=3)).tokens == 15
    # A call marked before any chunk: a receipt that charges nothing.
    assert crash_receipt(mark(0)).tokens == 0


@pytest.fixture
async def seq(db_url: str) -> AsyncIterator[Sequencer]:
    s = await Sequencer.open(db_url, clock=Clock(), hooks=[MerkleLog(SIGNER, ORIGIN)])
    try:
        await s.submit(CreateInstrumentOp(CreateInstrument(
            symbol=SYM, lot_size=LOT, tick_size=1, price_min=1, price_max=100_000,
            provider_fee_bps=250,
        )))  # fmt: skip
        await s.submit(DepositOp(Deposit(deposit_id="b1", account_id="b1", amount=10**6)))
        await s.submit(ListingOp("p1", Listing(listing_id="l", instrument=SYM, quantity=10**5)))
        await trade(s, "b1", "p1", 10_000, 3_000, "1")
        yield s
    finally:
        await s.close()


async def open_calls(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT receipt_id, chunks FROM gateway_calls")
    return {r["receipt_id"]: r["chunks"] for r in rows}


async def test_marks_replace_a_calls_progress_and_its_receipt_deletes_it(
    seq: Sequencer, db_conn: asyncpg.Connection
) -> None:
    a, b = mark(2), mark(0)
    assert await seq.submit(GatewayProgressOp((a, b))) == 2
    assert await open_calls(db_conn) == {a.receipt_id: 2, b.receipt_id: 0}
    later = msgspec.structs.replace(
        a, chunks=5, prompt_tokens=3, completion_tokens=5, cached_tokens=0, reasoning_tokens=0,
        marked_ms=1_500,
    )  # fmt: skip
    await seq.submit(GatewayProgressOp((later,)))
    row = await db_conn.fetchrow("SELECT * FROM gateway_calls WHERE receipt_id = $1", a.receipt_id)
    assert row is not None and (row["chunks"], row["completion_tokens"]) == (5, 5)
    assert row["marked_ms"] == 1_500 and row["started_ms"] == a.started_ms
    # The call ends: its receipt and the deletion of its row commit together.
    done = msgspec.structs.replace(receipt("b1", 8), receipt_id=a.receipt_id)
    await seq.submit(GatewayChargeOp((done,), closes=(a.receipt_id,)))
    assert await open_calls(db_conn) == {b.receipt_id: 0}
    # A mark queued before its call ended, in the same batch as the receipt: no row left.
    c = mark(1)
    c_done = msgspec.structs.replace(receipt("b1", 1), receipt_id=c.receipt_id)
    await seq.submit_all(
        [GatewayProgressOp((c,)), GatewayChargeOp((c_done,), closes=(c.receipt_id,))]
    )
    assert await open_calls(db_conn) == {b.receipt_id: 0}


async def test_a_restart_closes_the_calls_a_crash_cut_once_and_they_pass_the_audit(
    seq: Sequencer,
    db_conn: asyncpg.Connection,
    db_pool: asyncpg.Pool,
    db_url: str,
    journal: ReceiptJournal,
) -> None:
    cut, finished, silent = mark(6), mark(9), mark(0)
    used = mark(4, usage=(30, 15))
    await seq.submit(GatewayProgressOp((cut, finished, silent, used)))
    # `finished` ended and its receipt committed, but the crash came before its row went.
    whole = msgspec.structs.replace(receipt("b1", 12), receipt_id=finished.receipt_id)
    await seq.submit(GatewayChargeOp((whole,)))
    entitlement = settlement.entitlement("b1", "p1", SYM)
    before = seq.ledger.balance(entitlement).total
    cash = seq.ledger.balance(settlement.cash("p1", "USD")).total

    reservations = Reservations()
    meter = Meter(lambda: seq, reservations, 1.0, journal.bound(""))
    meter.start()
    try:
        futures = await close_crashed(db_pool, meter, reservations)
        assert len(futures) == 3
        for f in futures:
            await f  # their receipts are durable
        await meter.flush()  # and charged, deleting the calls' rows
        assert await close_crashed(db_pool, meter, reservations) == []  # a second restart
    finally:
        await meter.close()
    assert await open_calls(db_conn) == {}
    rows = await db_conn.fetch(
        "SELECT receipt_id, tokens, ending, transaction_id FROM gateway_receipts"
    )
    by_id = {r["receipt_id"]: (r["tokens"], r["ending"]) for r in rows}
    assert by_id == {
        cut.receipt_id: (6, "crash"), silent.receipt_id: (0, "crash"),
        used.receipt_id: (45, "crash"), finished.receipt_id: (12, "seen"),
    }  # fmt: skip
    assert seq.ledger.balance(entitlement).total == before - 6 - 45
    assert seq.ledger.balance(settlement.cash("p1", "USD")).total > cash
    assert reservations.outstanding == {}  # what the crash charges promised has committed
    assert reservations.key_used == {"ik_0000000000000000": 12 + 6 + 45}
    report = verified(await exported(db_url))
    # The finished call's delivery, and one of the three crash receipts (v2 layout).
    assert (report.gateway_deliveries, report.receipts) == (2, 4)


GRANT = KeyGrant("ik_0000000000000000", "b1", None, None, None)
ROUTE = routing.Route(SYM, "p1", routing.Endpoint("p1", "e1", 8), 100)
PLAN = metering.Plan(40, 20)


@dataclass
class Streaming:
    """A streaming call as the gateway's service holds it (`progress.Tracked`)."""

    receipt_id: str = field(default_factory=lambda: "rcp_" + secrets.token_hex(12))
    grant: KeyGrant = GRANT
    group: tuple[str, str, str] = ("b1", "p1", SYM)
    route: routing.Route = ROUTE
    model: str = "llama-3.1-70b"
    plan: metering.Plan = PLAN
    started_ms: int = 1_000
    request_bytes: bytes = b"{}"
    chunks: int = 0
    usage: metering.Usage | None = None
    response_hash: Any = field(default_factory=hashlib.sha256)


async def no_calls(conn: asyncpg.Connection) -> bool:
    return await open_calls(conn) == {}


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.02)


async def test_marks_ride_with_the_meter_once_a_period_until_the_receipt_closes_them(
    seq: Sequencer, db_conn: asyncpg.Connection, journal: ReceiptJournal
) -> None:
    reservations = Reservations()
    meter = Meter(lambda: seq, reservations, 60.0, journal.bound(""))
    progress = Progress(0.05, meter.wake)
    meter.rider = progress
    meter.start()
    progress.start()
    try:
        short, long = Streaming(), Streaming()
        progress.track(short)
        assert progress.untrack(short) is False  # ended before its first mark: never written
        progress.track(long)
        long.chunks = 3
        long.response_hash.update(b"data: w0\n\n")

        async def marked(chunks: int) -> bool:
            return (await open_calls(db_conn)).get(long.receipt_id) == chunks

        await eventually(lambda: marked(3))
        long.chunks = 9
        await eventually(lambda: marked(9))
        row = await db_conn.fetchrow("SELECT * FROM gateway_calls")
        assert bytes(row["response_sha256"]) == long.response_hash.digest()
        assert bytes(row["request_sha256"]) == hashlib.sha256(b"{}").digest()
        commits = progress.commits
        await asyncio.sleep(0.3)  # nothing changed: nothing more written
        assert progress.commits == commits
        # The call ends: its receipt is durable, and its charge deletes its row.
        done = msgspec.structs.replace(receipt("b1", 9), receipt_id=long.receipt_id)
        await meter.charge(done, recorded=progress.untrack(long))
        await eventually(lambda: no_calls(db_conn))
    finally:
        await progress.close()
        await meter.close()
    assert progress.marks == progress.commits >= 2  # one call, one mark a period it moved
