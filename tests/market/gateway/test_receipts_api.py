"""`GET /v1/receipts` and `GET /v1/receipts/{id}/proof` on a real `tokex serve` with the
`openai` SDK through the gateway: a buyer and its provider see the receipts (pages with a
stable cursor), nobody else does (404); proofs verify offline and up to a signed
checkpoint, tampered ones fail. On an instrument whose completion weight is 3."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import openai
import pytest

from ledger.merkle import InvalidProof
from ledger.note import Verifier
from ledger.receipts import ReceiptMismatch, receipt_hash, verify_receipt_proof
from market.client import TokexApiError
from schemas.accounts import Role
from schemas.ledger_proofs import InclusionProof
from tests.market.gateway.gateway_support import MODEL, Market, open_market
from tests.support.upstream import Mode, Upstream

CHAT = [{"role": "user", "content": "one two three"}]  # 3 prompt tokens upstream
WEIGHT = 3


@pytest.fixture
async def market(db_url: str, tmp_path: Path, upstream: Upstream) -> AsyncIterator[Market]:
    async for m in open_market(db_url, tmp_path, upstream, 100_000, completion_weight=WEIGHT):
        yield m


async def test_receipts_are_listed_proved_and_private(market: Market) -> None:
    m = market
    (listed,) = [i for i in await m.operator.instruments() if i.symbol == m.symbol]
    assert listed.completion_weight == WEIGHT
    client = openai.AsyncOpenAI(base_url=m.openai_url, api_key=await m.key(), max_retries=0)
    before = (await m.entitlement()).entitlement
    for n in range(1, 6):
        answer = await client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=n)
        assert answer.usage is not None and answer.usage.completion_tokens == n
    await m.settled()
    m.upstream.mode = Mode.NO_USAGE  # charged nothing, flushed alone: a receipt in no delivery
    await client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
    for _ in range(50):
        if len((await m.buyer.receipts()).items) == 6:
            break
        await asyncio.sleep(0.1)
    # Charged tokens = prompt + 3 x completion, and the entitlement fell by exactly that.
    charged = sum(3 + WEIGHT * n for n in range(1, 6))
    assert before - (await m.entitlement()).entitlement == charged

    pages, cursor = [], None
    while True:
        page = await m.buyer.receipts(limit=2, cursor=cursor)
        pages.append(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [len(p) for p in pages] == [2, 2, 2]
    mine = [r for p in pages for r in p]  # newest first
    assert [r.receipt.tokens for r in mine] == [0] + [3 + WEIGHT * n for n in range(5, 0, -1)]
    assert all(r.receipt_sha256 == receipt_hash(r.receipt) for r in mine)
    assert [r.receipt.receipt_id async for r in m.provider.all_receipts()] == [
        r.receipt.receipt_id for r in mine
    ]
    assert (await m.buyer.receipt(mine[0].receipt.receipt_id)) == mine[0]

    key = Verifier.parse((await m.buyer.request("GET", "/v1/ledger/public-keys"))["keys"][0]["key"])
    for r in mine[1:]:
        proof = await m.buyer.receipt_proof(r.receipt.receipt_id)
        assert proof.receipt == r.receipt
        assert proof.delivery.transaction.id == r.transaction_id
        cp = await m.provider.prove_receipt(r.receipt.receipt_id, key)
        assert cp.size > proof.delivery.index

    free = mine[0].receipt.receipt_id
    assert mine[0].transaction_id is None
    with pytest.raises(TokexApiError) as caught:
        await m.buyer.receipt_proof(free)
    assert (caught.value.status, caught.value.code) == (404, "receipt_not_delivered")

    stranger = m.operator.as_account(await m.operator.create_account(Role.BUYER, "stranger"))
    assert (await stranger.receipts()).items == []
    for call in (stranger.receipt, stranger.receipt_proof):
        with pytest.raises(TokexApiError) as caught:
            await call(mine[0].receipt.receipt_id)
        assert (caught.value.status, caught.value.code) == (404, "receipt_not_found")
    for params in ({"cursor": "x1"}, {"limit": 0}, {"limit": 1001}):
        with pytest.raises(TokexApiError) as caught:
            await m.buyer.request("GET", "/v1/receipts", params=params)
        assert caught.value.status == 400, params


async def test_tampered_proofs_fail(market: Market) -> None:
    m = market
    client = openai.AsyncOpenAI(base_url=m.openai_url, api_key=await m.key(), max_retries=0)
    for n in (4, 5, 6):  # one flush or several: proofs hold either way
        await client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=n)
    await m.settled()
    page = await m.buyer.receipts()
    proofs = [await m.buyer.receipt_proof(r.receipt.receipt_id) for r in page.items]
    p = proofs[0]
    fewer = msgspec.structs.replace(p.receipt, completion_tokens=1, tokens=3 + WEIGHT)
    bad = [
        msgspec.structs.replace(p, receipt=fewer),
        msgspec.structs.replace(p, receipt=fewer, receipt_sha256=receipt_hash(fewer)),
        msgspec.structs.replace(
            p, receipt=proofs[1].receipt, receipt_sha256=proofs[1].receipt_sha256
        ),
        msgspec.structs.replace(
            p, proof=InclusionProof(p.proof.leaf_index, p.proof.tree_size + 1, p.proof.hashes)
        ),
    ]
    if p.proof.hashes:
        flipped = [bytes(32), *p.proof.hashes[1:]]
        bad.append(msgspec.structs.replace(
            p, proof=InclusionProof(p.proof.leaf_index, p.proof.tree_size, flipped)))  # fmt: skip
    for tampered in bad:
        with pytest.raises((ReceiptMismatch, InvalidProof)):
            verify_receipt_proof(tampered)
