"""Reading receipts: a party's receipts page by page, one receipt's proof in its delivery,
and the receipts of a range of deliveries for the audit export.

Receipts are written by the receipt journal at their calls' end (`market.gateway.journal`)
and charged by the sequencer (`market.sequencer.delivery`, which links each to its
delivery: `gateway_delivery_receipts`); here they are read. A receipt is visible to its
buyer and its provider, nobody else: another account's receipt id answers 404, as if it
did not exist.

Order and cursor: receipts are listed newest first by `seq`, the order they were
numbered in as written, so a client paging with `next_cursor` sees every receipt once
that was committed when it began. (Journal commits run several at a time: a receipt may
commit a moment after one with a greater number, and a walk begun in between does not
see it, as it does not see any receipt committed after it began.) The cursor
is the last `seq` seen, tagged as the receipts list's, as an opaque string.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg

from ledger.canonical import decode_transaction
from ledger.merkle import MemoryNodeStore, leaf_hash
from ledger.receipts import receipt_bytes, receipt_hash
from market.pages import Page, decode_cursor, page_of
from schemas.errors import DomainError, ErrorKind
from schemas.gateway import Ending, GatewayReceipt, ReceiptProof, ReceiptView
from schemas.ledger_api import LedgerEntry, TransactionView
from schemas.ledger_proofs import InclusionProof

MAX_PAGE = 1000
_FIELDS = tuple(GatewayReceipt.__struct_fields__)


class ReceiptNotFound(DomainError):
    """No such receipt of yours (another account's answers the same)."""

    code = "receipt_not_found"
    kind = ErrorKind.NOT_FOUND


class ReceiptNotDelivered(DomainError):
    """The receipt is in no delivery (not charged yet, or charged nothing): no proof."""

    code = "receipt_not_delivered"
    kind = ErrorKind.NOT_FOUND


def receipt_of(row: asyncpg.Record) -> GatewayReceipt:
    values = {name: row[name] for name in _FIELDS}
    values["request_sha256"] = bytes(values["request_sha256"])
    values["response_sha256"] = bytes(values["response_sha256"])
    values["ending"] = Ending(values["ending"])
    return GatewayReceipt(**values)


def _view(row: asyncpg.Record) -> ReceiptView:
    r = receipt_of(row)
    return ReceiptView(receipt=r, receipt_sha256=receipt_hash(r), transaction_id=row["charged_in"])


# As buyer and as provider: two walks of their (party, seq) indexes, merged.
_PAGE = """
WITH page AS (
    (SELECT seq FROM gateway_receipts WHERE buyer = $1 AND {where} ORDER BY {order} LIMIT $2)
    UNION
    (SELECT seq FROM gateway_receipts WHERE provider = $1 AND {where} ORDER BY {order} LIMIT $2)
)
SELECT r.*, coalesce(l.transaction_id, r.transaction_id) AS charged_in
  FROM page JOIN gateway_receipts r USING (seq)
  LEFT JOIN gateway_delivery_receipts l USING (receipt_id)
 ORDER BY r.{order} LIMIT $2
"""


async def tokens_used(conn: asyncpg.Connection, key_ids: list[str]) -> dict[str, int]:
    """The tokens charged so far to each of these inference keys (a budget's use);
    a key with no receipts is absent."""
    rows = await conn.fetch(
        """SELECT key_id, coalesce(sum(tokens), 0) AS used FROM gateway_receipts
            WHERE key_id = ANY($1::text[]) GROUP BY key_id""",
        key_ids,
    )
    return {r["key_id"]: int(r["used"]) for r in rows}


async def page(
    conn: asyncpg.Connection, account_id: str, limit: int, cursor: str | None
) -> Page[ReceiptView]:
    """Receipts of `account_id` as buyer or provider, newest first by commit order
    (`seq`), paginated like every list (`market.pages`)."""
    keyset = decode_cursor(cursor, "receipts", 1, (int,))
    where, order, key = keyset.sql("(seq)", 3)
    rows = await conn.fetch(_PAGE.format(where=where, order=order), account_id, limit + 1, *key)
    return page_of(rows, limit, keyset, lambda r: (r["seq"],), _view)


_ONE = """
SELECT r.*, coalesce(l.transaction_id, r.transaction_id) AS charged_in
  FROM gateway_receipts r LEFT JOIN gateway_delivery_receipts l USING (receipt_id)
 WHERE r.receipt_id = $1 AND (r.buyer = $2 OR r.provider = $2)
"""


async def _owned(conn: asyncpg.Connection, account_id: str, receipt_id: str) -> asyncpg.Record:
    row = await conn.fetchrow(_ONE, receipt_id, account_id)
    if row is None:
        raise ReceiptNotFound(f"no receipt {receipt_id!r} of yours")
    return row


async def view(conn: asyncpg.Connection, account_id: str, receipt_id: str) -> ReceiptView:
    return _view(await _owned(conn, account_id, receipt_id))


async def proof(conn: asyncpg.Connection, account_id: str, receipt_id: str) -> ReceiptProof:
    """The receipt's inclusion proof in its delivery's receipt tree, and the delivery's
    ledger entry (`ledger.receipts.verify_receipt_proof` checks it)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        receipt = receipt_of(await _owned(conn, account_id, receipt_id))
        link = await conn.fetchrow(
            "SELECT transaction_id, position FROM gateway_delivery_receipts WHERE receipt_id = $1",
            receipt_id,
        )
        if link is None:
            raise ReceiptNotDelivered(
                f"receipt {receipt_id!r} is in no delivery (not charged yet, or charged nothing)"
            )
        rows = await conn.fetch(
            "SELECT r.* FROM gateway_delivery_receipts l JOIN gateway_receipts r USING "
            "(receipt_id) WHERE l.transaction_id = $1 ORDER BY l.position",
            link["transaction_id"],
        )
        entry = await conn.fetchrow(
            "SELECT idx, body FROM ledger_transactions WHERE tx_id = $1", link["transaction_id"]
        )
    assert entry is not None  # written in the same statement as the link
    tree = MemoryNodeStore(leaf_hash(receipt_hash(receipt_of(r))) for r in rows)
    position: int = link["position"]
    body = bytes(entry["body"])
    return ReceiptProof(
        receipt=receipt,
        receipt_sha256=receipt_hash(receipt),
        proof=InclusionProof(
            leaf_index=position, tree_size=tree.size, hashes=tree.inclusion_proof(position)
        ),
        delivery=LedgerEntry(
            index=entry["idx"],
            canonical=body,
            leaf_hash=leaf_hash(body),
            transaction=TransactionView.of(decode_transaction(body)),
        ),
    )


_OF_RANGE = """
SELECT l.transaction_id AS delivery, r.*
  FROM gateway_delivery_receipts l
  JOIN ledger_transactions t ON t.tx_id = l.transaction_id
  JOIN gateway_receipts r ON r.receipt_id = l.receipt_id
 WHERE t.idx >= $1 AND t.idx < $2
 ORDER BY t.idx, l.position
"""


async def delivery_receipts(
    conn: asyncpg.Connection, from_index: int, to_index: int
) -> AsyncIterator[tuple[str, bytes]]:
    """The receipts of the deliveries at ledger indices [from_index, to_index), in index
    order and each delivery's in its tree's order, as canonical bytes: the audit export's
    `ReceiptSource` (run inside its transaction: a cursor)."""
    async for row in conn.cursor(_OF_RANGE, from_index, to_index):
        yield row["delivery"], receipt_bytes(receipt_of(row))
