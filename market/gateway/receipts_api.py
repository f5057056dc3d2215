"""Receipt routes (`/v1/receipts`; Ed25519-signed like every /v1 route, any role).

- `GET /v1/receipts?limit=&cursor=`: your receipts, as buyer or as provider, newest
  first in the order they were committed in, a page like every list's
  (`market.pages`: `next_cursor` older, `prev_cursor` newer). `limit` 1..1000, default 100.
- `GET /v1/receipts/{receipt_id}`: one of your receipts.
- `GET /v1/receipts/{receipt_id}/proof`: its inclusion proof in its delivery's receipt
  tree, with the delivery's ledger entry; check it offline with
  `ledger.receipts.verify_receipt_proof` (`TokexClient.receipt_proof` does), then the
  entry's place in the signed log with `GET /v1/ledger/proof/inclusion?index=...`.

Another account's receipt answers 404 `receipt_not_found`, as if it did not exist; a
receipt in no delivery (not charged yet, or charged nothing) has no proof: 404
`receipt_not_delivered`.
"""

from __future__ import annotations

from typing import Annotated

import asyncpg
from litestar import Router, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from market.auth import Principal
from market.gateway import receipts
from market.pages import Page
from schemas.gateway import ReceiptProof, ReceiptView


@get("/", summary="Your receipts, as buyer or provider, newest first (cursor-paginated)")
async def list_receipts(
    principal: NamedDependency[Principal],
    pool: NamedDependency[asyncpg.Pool],
    limit: Annotated[int, QueryParameter(ge=1, le=receipts.MAX_PAGE)] = 100,
    cursor: Annotated[str | None, QueryParameter(max_length=512)] = None,
) -> Page[ReceiptView]:
    async with pool.acquire() as conn:
        return await receipts.page(conn, principal.account_id, limit, cursor)


@get("/{receipt_id:str}", summary="One of your receipts")
async def get_receipt(
    receipt_id: FromPath[str],
    principal: NamedDependency[Principal],
    pool: NamedDependency[asyncpg.Pool],
) -> ReceiptView:
    async with pool.acquire() as conn:
        return await receipts.view(conn, principal.account_id, receipt_id)


@get("/{receipt_id:str}/proof", summary="A receipt's inclusion proof in its delivery")
async def receipt_proof(
    receipt_id: FromPath[str],
    principal: NamedDependency[Principal],
    pool: NamedDependency[asyncpg.Pool],
) -> ReceiptProof:
    async with pool.acquire() as conn:
        return await receipts.proof(conn, principal.account_id, receipt_id)


receipts_router = Router(
    "/v1/receipts", route_handlers=[list_receipts, get_receipt, receipt_proof], tags=["gateway"]
)
