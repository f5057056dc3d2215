"""End to end on `tokex serve`: a buyer's voucher (signed by `TokexClient.sign_voucher` and
by `tokex voucher sign`) releases escrow at once; forged, replayed, another buyer's key,
another provider's or an altered instrument, beyond the entitlement and on a settled
instrument are refused with their codes; a buyer sees a provider's pending report,
disputes it, and the operator resolves it, over HTTP."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from market.client import TokexApiError, TokexClient
from ops.cli import main
from schemas.accounts import AccountCreated, Role
from schemas.disputes import SignedVoucher, Voucher
from schemas.market import Side
from schemas.trading import CreateInstrument, PlaceOrder
from tests.support.server import ServerProcess, operator_client

SYM = "llama-3.1-70b/2030-01-01T00Z/1h"
OTHER = "llama-3.1-8b/2030-01-01T00Z/1h"


@dataclass
class Market:
    operator: TokexClient
    provider: TokexClient
    other_provider: TokexClient
    buyer: TokexClient
    other_buyer: TokexClient
    buyer_account: AccountCreated
    ids: dict[str, str]


@pytest.fixture
async def market(db_url: str, server_process: ServerProcess) -> AsyncIterator[Market]:
    operator = await operator_client(db_url, server_process.base_url)
    for symbol in (SYM, OTHER):
        await operator.create_instrument(
            CreateInstrument(
                symbol=symbol, lot_size=1000, tick_size=1, price_min=1, price_max=100_000,
                provider_fee_bps=250, delivery_grace_s=3600, dispute_period_s=3600,
            )
        )  # fmt: skip
    made = {
        name: await operator.create_account(role, name)
        for name, role in (
            ("p", Role.PROVIDER), ("p2", Role.PROVIDER), ("b", Role.BUYER), ("b2", Role.BUYER),
        )
    }  # fmt: skip
    clients = {name: operator.as_account(created) for name, created in made.items()}
    for name in ("b", "b2"):
        await operator.deposit(f"dep-{name}", made[name].account_id, 1_000_000)
    for symbol in (SYM, OTHER):
        await clients["p"].list_capacity(f"cap-{symbol}", symbol, 20_000)
        await clients["p"].place_order(
            PlaceOrder(client_order_id=f"ask-{symbol}", instrument=symbol, side=Side.SELL,
                       quantity=20_000, price=1_000)
        )  # fmt: skip
        for name in ("b", "b2"):
            await clients[name].place_order(
                PlaceOrder(client_order_id=f"bid-{symbol}", instrument=symbol, side=Side.BUY,
                           quantity=10_000, price=1_000)
            )  # fmt: skip
    yield Market(
        operator, clients["p"], clients["p2"], clients["b"], clients["b2"], made["b"],
        {name: created.account_id for name, created in made.items()},
    )  # fmt: skip
    await operator.aclose()


async def refused(attempt: object) -> tuple[int, str]:
    with pytest.raises(TokexApiError) as error:
        await attempt  # type: ignore[misc]
    return error.value.status, error.value.code


async def cash(client: TokexClient) -> int:
    return next((b.available for b in await client.balances() if b.kind == "cash"), 0)


async def test_vouchers_over_http(market: Market, tmp_path: Path) -> None:
    m, ids = market, market.ids
    b, p = ids["b"], ids["p"]
    v1 = m.buyer.sign_voucher(b, p, SYM, 4_000, 1)
    accepted = await m.provider.submit_voucher(v1)
    # 10,000 tokens for 10,000 of escrow: 4,000 release 4,000, fee 100; paid at once
    assert (accepted.delta, accepted.released, accepted.fee) == (4_000, 4_000, 100)
    assert await cash(m.provider) == 3_900
    assert [v.version for v in await m.buyer.vouchers()] == [1]
    assert [v.version for v in await m.provider.vouchers()] == [1]

    # replayed: the same voucher again, and an older one
    assert await refused(m.provider.submit_voucher(v1)) == (409, "voucher_replayed")
    older = m.buyer.sign_voucher(b, p, SYM, 3_000, 2)
    assert await refused(m.provider.submit_voucher(older)) == (409, "voucher_replayed")
    # forged: the provider raises the tokens of a signed voucher
    raised = msgspec.structs.replace(v1, voucher=msgspec.structs.replace(v1.voucher, tokens=9_000))
    assert await refused(m.provider.submit_voucher(raised)) == (422, "voucher_bad_signature")
    # the signature of a voucher for the other instrument, moved onto this one
    other = m.buyer.sign_voucher(b, p, OTHER, 5_000, 2)
    moved = SignedVoucher(voucher=msgspec.structs.replace(other.voucher, instrument=SYM),
                          signature=other.signature)  # fmt: skip
    assert await refused(m.provider.submit_voucher(moved)) == (422, "voucher_bad_signature")
    garbage = SignedVoucher(voucher=v1.voucher, signature=base64.b64encode(b"x" * 10).decode())
    assert await refused(m.provider.submit_voucher(garbage)) == (422, "voucher_bad_signature")
    # another buyer's key, claiming to be b
    impostor = m.other_buyer.sign_voucher(b, p, SYM, 9_000, 5)
    assert await refused(m.provider.submit_voucher(impostor)) == (403, "voucher_key_not_buyer")
    unknown = msgspec.structs.replace(
        v1, voucher=msgspec.structs.replace(v1.voucher, key_id="key_0000000000000000")
    )
    assert await refused(m.provider.submit_voucher(unknown)) == (422, "voucher_unknown_key")
    # another provider's voucher, submitted by p; and submitted by p2 for p's tokens
    for_p2 = m.buyer.sign_voucher(b, ids["p2"], SYM, 5_000, 2)
    assert await refused(m.provider.submit_voucher(for_p2)) == (403, "voucher_not_yours")
    assert await refused(m.other_provider.submit_voucher(v1)) == (403, "voucher_not_yours")
    # only providers submit vouchers
    assert (await refused(m.buyer.submit_voucher(v1)))[0] == 403
    # beyond the entitlement: 4,000 + 6,001 of 10,000
    beyond = m.buyer.sign_voucher(b, p, SYM, 10_001, 2)
    assert await refused(m.provider.submit_voucher(beyond)) == (422, "entitlement_exceeded")
    assert await cash(m.provider) == 3_900  # none of the refused moved anything

    # `tokex voucher sign` makes the same thing from the buyer's key file, offline
    key_file = tmp_path / "buyer.pem"
    assert m.buyer_account.private_key is not None
    key_file.write_text(m.buyer_account.private_key)
    line = await _cli_sign(key_file, m.buyer_account.key_id, b, p, SYM, 6_000, 2)
    signed = msgspec.json.decode(line, type=SignedVoucher)
    assert signed.voucher == Voucher(buyer=b, provider=p, instrument=SYM, tokens=6_000,
                                     version=2, key_id=m.buyer_account.key_id)  # fmt: skip
    second = await m.provider.submit_voucher(signed)
    assert (second.delta, second.released) == (2_000, 2_000)
    assert await cash(m.provider) == 3_900 + 1_950

    # settled: a voucher is refused
    await m.operator.close_instrument(SYM)
    late = m.buyer.sign_voucher(b, p, SYM, 7_000, 3)
    assert await refused(m.provider.submit_voucher(late)) == (422, "instrument_settled")


async def _cli_sign(
    key_file: Path, key_id: str, buyer: str, provider: str, symbol: str, tokens: int, version: int
) -> bytes:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([
            "voucher", "sign", "--key-file", str(key_file), "--key-id", key_id,
            "--buyer", buyer, "--provider", provider, "--instrument", symbol,
            "--tokens", str(tokens), "--version", str(version),
        ])  # fmt: skip
    assert code == 0
    return out.getvalue().strip().encode()


async def test_a_dispute_over_http(market: Market) -> None:
    m, ids = market, market.ids
    b, b2, p = ids["b"], ids["b2"], ids["p"]
    r1 = await m.provider.report_delivery("r1", SYM, b, 2_000)
    r2 = await m.provider.report_delivery("r2", SYM, b2, 3_000)
    assert (r1.status, r1.settles_at_ms) == ("pending", r1.time_ms + 3_600_000)
    # each buyer sees its own pending reports; the provider both; the operator all
    assert [x.report_id for x in await m.buyer.delivery_reports()] == ["r1"]
    assert sorted(x.report_id for x in await m.provider.delivery_reports()) == ["r1", "r2"]
    assert sorted(x.report_id for x in await m.operator.delivery_reports()) == ["r1", "r2"]
    assert (await refused(m.buyer.delivery_reports(status="nope")))[0] == 400
    (mine,) = [e for e in await m.buyer.entitlements() if e.instrument == SYM]
    assert (mine.entitlement, mine.pending_tokens, mine.pending_escrow) == (8_000, 2_000, 2_000)

    assert await refused(m.buyer.dispute(p, "r2", "not mine")) == (404, "unknown_report")
    assert await refused(m.provider.dispute(p, "r1", "its own")) == (404, "unknown_report")
    d1 = await m.buyer.dispute(p, "r1", "the endpoint was down all hour")
    assert (d1.status, d1.reason, d1.tokens) == ("open", "the endpoint was down all hour", 2_000)
    assert [x.status for x in await m.buyer.delivery_reports(status="disputed")] == ["disputed"]
    assert [x.dispute_id for x in await m.provider.disputes()] == [d1.dispute_id]
    assert [x.dispute_id for x in await m.other_buyer.disputes()] == []

    assert (await refused(m.buyer.resolve_dispute(d1.dispute_id, "refund")))[0] == 403
    assert (await refused(m.operator.resolve_dispute("dsp_nope", "pay")))[0] == 404
    assert (await refused(m.operator.resolve_dispute(d1.dispute_id, "maybe")))[0] == 400
    before = await cash(m.buyer)
    done = await m.operator.resolve_dispute(d1.dispute_id, "refund")
    assert done.status == "refunded" and done.transaction_id == f"dispute-refund:{d1.dispute_id}"
    assert await cash(m.buyer) == before + 2_000
    assert await m.operator.resolve_dispute(d1.dispute_id, "refund") == done
    assert await refused(m.operator.resolve_dispute(d1.dispute_id, "pay")) == (
        409, "dispute_resolved",
    )  # fmt: skip
    assert await cash(m.provider) == 0  # r2 is still pending: nothing paid yet
    assert [x.report_id for x in await m.other_buyer.delivery_reports()] == [r2.report_id]


async def test_a_provider_that_bought_disputes_a_report_against_what_it_bought(
    market: Market,
) -> None:
    """Providers may buy; another provider's report against what they bought is theirs
    to see and to dispute, as a buyer's."""
    m, ids = market, market.ids
    await m.operator.deposit("dep-p", ids["p"], 1_000_000)
    await m.other_provider.list_capacity("cap-p2", SYM, 10_000)
    await m.other_provider.place_order(
        PlaceOrder(client_order_id="ask-p2", instrument=SYM, side=Side.SELL,
                   quantity=10_000, price=1_000)
    )  # fmt: skip
    bought = await m.provider.place_order(
        PlaceOrder(client_order_id="bid-p", instrument=SYM, side=Side.BUY,
                   quantity=10_000, price=1_000)
    )  # fmt: skip
    assert bought.status == "filled"
    report = await m.other_provider.report_delivery("r-p2", SYM, ids["p"], 10_000)
    assert report.status == "pending"
    assert [x.report_id for x in await m.provider.delivery_reports()] == ["r-p2"]
    opened = await m.provider.dispute(ids["p2"], "r-p2", "never served")
    assert (opened.status, opened.tokens) == ("open", 10_000)
    assert [x.dispute_id for x in await m.provider.disputes()] == [opened.dispute_id]
    assert [x.dispute_id for x in await m.other_provider.disputes()] == [opened.dispute_id]
    assert await refused(m.other_provider.dispute(ids["p2"], "r-p2", "its own")) == (
        404, "unknown_report",
    )  # fmt: skip
    before = await cash(m.provider)
    done = await m.operator.resolve_dispute(opened.dispute_id, "refund")
    assert done.status == "refunded" and await cash(m.provider) > before


async def test_an_outcome_is_exactly_pay_or_refund(market: Market) -> None:
    """`"pay\\n"` once passed the outcome's pattern (`$` matches before a final newline)
    and, not being "pay", refunded the buyer: the opposite of what the operator asked."""
    m, ids = market, market.ids
    await m.provider.report_delivery("r1", SYM, ids["b"], 2_000)
    opened = await m.buyer.dispute(ids["p"], "r1", "no such calls")
    path = f"/v1/disputes/{opened.dispute_id}/resolve"
    for outcome in ("pay\n", "refund\n", "PAY", " pay"):
        assert await refused(m.operator.request("POST", path, json={"outcome": outcome})) == (
            400, "invalid_request",
        ), outcome  # fmt: skip
    (still,) = await m.operator.disputes()
    assert still.status == "open"
    assert (await m.operator.resolve_dispute(opened.dispute_id, "pay")).status == "paid"


async def test_an_auditor_reads_every_report_and_dispute(market: Market) -> None:
    """The auditor reads everything (as the operator does these lists), changes nothing."""
    m, ids = market, market.ids
    auditor = m.operator.as_account(await m.operator.create_account(Role.AUDITOR, "aud"))
    await m.provider.report_delivery("r1", SYM, ids["b"], 2_000)
    await m.provider.report_delivery("r2", SYM, ids["b2"], 3_000)
    opened = await m.buyer.dispute(ids["p"], "r1", "no such calls")
    assert sorted(r.report_id for r in await auditor.delivery_reports(status="all")) == [
        "r1", "r2",
    ]  # fmt: skip
    assert [d.dispute_id for d in await auditor.disputes()] == [opened.dispute_id]
    assert (await refused(auditor.resolve_dispute(opened.dispute_id, "refund")))[0] == 403
    assert (await refused(auditor.dispute(ids["p"], "r2", "not its"))) == (403, "forbidden_role")
