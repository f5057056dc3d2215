"""Buyer vouchers: the signed bytes (pure), and their redemption through the sequencer on a
real PostgreSQL: escrow released at once for what a voucher adds to the last one, with the
delivery rule; refused when replayed or older, beyond the entitlement, for another
provider, or on a settled instrument."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import ed25519
from market.clearing import rules as settlement
from market.sequencer import (
    CloseInstrumentOp,
    EntitlementExceeded,
    InstrumentSettled,
    Sequencer,
)
from market.sequencer.errors import VoucherNotYours, VoucherReplayed
from market.sequencer.ops import VoucherOp
from market.sequencer.vouchers import voucher_report_id
from market.vouchers import (
    VOUCHER_PREFIX,
    decode_voucher_signature,
    sign_voucher,
    voucher_message,
)
from schemas.disputes import Voucher, VoucherView
from tests.market.test_delivery import SYM, Clock, cash, ent, esc, open_market, report, trade
from tests.market.test_sequencer import assert_books_balance

KEY = "key_00000000000000aa"


def voucher(tokens: int, version: int, **changes: str) -> Voucher:
    fields: dict[str, object] = {
        "buyer": "b1", "provider": "p1", "instrument": SYM, "tokens": tokens,
        "version": version, "key_id": KEY,
    }  # fmt: skip
    fields.update(changes)
    return Voucher(**fields)  # type: ignore[arg-type]


# -- the signed bytes ---------------------------------------------------------------------


def test_a_voucher_signature_covers_every_field_under_its_own_prefix() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    v = voucher(5_000, 2)
    signed = sign_voucher(key, v)
    signature = decode_voucher_signature(signed.signature)
    assert signature is not None
    message = voucher_message(v)
    assert message.startswith(VOUCHER_PREFIX)
    assert ed25519.verify(public, signature, message)
    # any field changed: the signature no longer holds
    for changed in (
        voucher(5_001, 2), voucher(5_000, 3), voucher(5_000, 2, buyer="b2"),
        voucher(5_000, 2, provider="p2"), voucher(5_000, 2, instrument="other/1h"),
        voucher(5_000, 2, key_id="key_00000000000000bb"),
    ):  # fmt: skip
        assert not ed25519.verify(public, signature, voucher_message(changed))
    # the same bytes without the prefix are not what was signed
    assert not ed25519.verify(public, signature, message[len(VOUCHER_PREFIX) :])
    assert decode_voucher_signature("not base64!") is None
    assert decode_voucher_signature("AAAA") is None  # 3 bytes, not 64


# -- redemption ---------------------------------------------------------------------------


async def redeem(s: Sequencer, v: Voucher, provider: str = "p1") -> VoucherView:
    view = await s.submit(VoucherOp(provider, v, b"\x01" * 64))
    assert isinstance(view, VoucherView)
    return view


@pytest.fixture
async def seq(db_url: str) -> Sequencer:
    s = await open_market(db_url, Clock())
    await trade(s, "b1", "p1", 10_000, 3_333, "t")  # escrow 33,330
    return s


async def test_a_voucher_releases_escrow_at_once_for_what_it_adds(
    seq: Sequencer, db_url: str
) -> None:
    s = seq
    try:
        first = await redeem(s, voucher(3_000, 1))
        # floor(33,330 * 3,000 / 10,000) = 9,999; fee 249: paid now, nothing pending
        assert (first.delta, first.released, first.fee, first.paid) == (3_000, 9_999, 249, 9_750)
        assert cash(s, "p1") == (9_750, 0)
        assert (ent(s, "b1", "p1"), esc(s, "b1", "p1")) == (7_000, 23_331)
        # cumulative: the next voucher releases only what it adds (3,000 more)
        second = await redeem(s, voucher(6_000, 2))
        assert (second.delta, second.released) == (3_000, 23_331 * 3_000 // 7_000)
        assert second.transaction_id == settlement.delivery_id(
            "p1", voucher_report_id("b1", SYM, 2)
        )
        assert ent(s, "b1", "p1") == 4_000
        # replayed, lower, equal tokens, or an older version: refused, nothing moves
        for stale in (voucher(6_000, 2), voucher(5_000, 3), voucher(6_000, 3), voucher(7_000, 2)):
            with pytest.raises(VoucherReplayed):
                await redeem(s, stale)
        assert ent(s, "b1", "p1") == 4_000
        # beyond the entitlement: 6,000 + 4,001 acknowledges one token too many
        with pytest.raises(EntitlementExceeded):
            await redeem(s, voucher(10_001, 3))
        # a pending report's tokens are not free for a voucher either
        await report(s, "p1", "r1", "b1", 1_000)
        with pytest.raises(EntitlementExceeded):
            await redeem(s, voucher(10_000, 3))
        last = await redeem(s, voucher(9_000, 3))
        assert last.delta == 3_000 and ent(s, "b1", "p1") == 1_000  # r1's, held
        # another provider's voucher, submitted by p1: refused
        with pytest.raises(VoucherNotYours):
            await redeem(s, voucher(9_500, 4, provider="p2"))
        await assert_books_balance(s, db_url)
    finally:
        await s.close()


async def test_a_voucher_survives_a_restart_and_a_settled_instrument_refuses_one(
    seq: Sequencer, db_url: str
) -> None:
    s = seq
    try:
        await redeem(s, voucher(2_000, 1))
    finally:
        await s.close()
    s = await Sequencer.open(db_url, clock=Clock())
    try:  # the last voucher is read from the database: a replay is still refused
        with pytest.raises(VoucherReplayed):
            await redeem(s, voucher(2_000, 1))
        await s.submit(CloseInstrumentOp(SYM))
        with pytest.raises(InstrumentSettled):
            await redeem(s, voucher(3_000, 2))
        assert cash(s, "p1")[0] == 6_666 - 6_666 * 250 // 10_000
        await assert_books_balance(s, db_url)
    finally:
        await s.close()
