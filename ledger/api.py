"""The public, read-only API of the verifiable ledger (``/v1/ledger/...``).

Everything here is read from the database the single writer writes (``ledger_transactions``
and the Merkle log tables of migration 0002), so it works in any process that has the pool.
Nothing needs authentication: checkpoints, proofs and entries are what an auditor checks.

- ``GET /v1/ledger/checkpoint``: the latest signed checkpoint, as the C2SP note (text/plain).
- ``GET /v1/ledger/checkpoints?size=N`` (or ``?from_size=M&limit=K``): checkpoints as JSON.
- ``GET /v1/ledger/entries/{index}``: canonical bytes (base64), leaf hash and decoded form.
- ``GET /v1/ledger/proof/inclusion?index=I&size=N``: RFC 9162 inclusion proof.
- ``GET /v1/ledger/proof/consistency?first=M&second=N``: RFC 9162 consistency proof.
- ``GET /v1/ledger/public-keys``: every checkpoint key, with the size it is valid from.

``size`` defaults to the latest checkpoint's. Sizes beyond the log are refused (400
``proof_range_invalid``); a missing entry or checkpoint is 404.
"""

from __future__ import annotations

from typing import Annotated

import asyncpg
from litestar import Response, Router, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from ledger.canonical import decode_transaction
from ledger.log import db_consistency_proof, db_inclusion_proof, log_size
from ledger.merkle import MerkleRangeError, leaf_hash
from ledger.note import Verifier
from schemas.errors import DomainError, ErrorKind
from schemas.ledger_api import (
    CheckpointList,
    CheckpointView,
    LedgerEntry,
    PublicKey,
    PublicKeys,
    TransactionView,
)
from schemas.ledger_proofs import ConsistencyProof, InclusionProof

__all__ = ["CheckpointNotFound", "EntryNotFound", "ledger_router"]

_MAX = 2**63 - 1
MAX_CHECKPOINTS = 1000


class CheckpointNotFound(DomainError):
    """No checkpoint of that size (or none yet)."""

    code = "checkpoint_not_found"
    kind = ErrorKind.NOT_FOUND


class EntryNotFound(DomainError):
    """No committed transaction at that index."""

    code = "entry_not_found"
    kind = ErrorKind.NOT_FOUND


async def _latest_size(conn: asyncpg.Connection) -> int:
    size = await conn.fetchval("SELECT max(tree_size) FROM ledger_checkpoints")
    if size is None:
        raise CheckpointNotFound("the ledger has no checkpoint yet")
    return int(size)


async def _within_log(conn: asyncpg.Connection, size: int) -> None:
    current = await log_size(conn)
    if size > current:
        raise MerkleRangeError(f"tree size {size} is beyond the log's size {current}")


@get("/checkpoint", media_type="text/plain; charset=utf-8", summary="Latest signed checkpoint")
async def latest_checkpoint(pool: NamedDependency[asyncpg.Pool]) -> Response[str]:
    async with pool.acquire() as conn:
        note = await conn.fetchval(
            "SELECT note FROM ledger_checkpoints ORDER BY tree_size DESC LIMIT 1"
        )
    if note is None:
        raise CheckpointNotFound("the ledger has no checkpoint yet")
    return Response(note, media_type="text/plain; charset=utf-8")


@get("/checkpoints", summary="Signed checkpoints by size")
async def checkpoints(
    pool: NamedDependency[asyncpg.Pool],
    size: Annotated[int | None, QueryParameter(ge=0, le=_MAX)] = None,
    from_size: Annotated[int, QueryParameter(ge=0, le=_MAX)] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_CHECKPOINTS)] = 100,
) -> CheckpointList:
    """``size=N``: the checkpoint of exactly that size; else up to ``limit`` from ``from_size``."""
    async with pool.acquire() as conn:
        if size is not None:
            rows = await conn.fetch(
                "SELECT tree_size, root, time_ms, key, note FROM ledger_checkpoints "
                "WHERE tree_size = $1",
                size,
            )
            if not rows:
                raise CheckpointNotFound(f"no checkpoint of size {size}")
        else:
            rows = await conn.fetch(
                "SELECT tree_size, root, time_ms, key, note FROM ledger_checkpoints "
                "WHERE tree_size >= $1 ORDER BY tree_size LIMIT $2",
                from_size,
                limit,
            )
    return CheckpointList(
        [
            CheckpointView(r["tree_size"], bytes(r["root"]), r["time_ms"], r["key"], r["note"])
            for r in rows
        ]
    )


@get("/entries/{index:int}", summary="One committed transaction: canonical bytes and meaning")
async def entry(pool: NamedDependency[asyncpg.Pool], index: FromPath[int]) -> LedgerEntry:
    if index < 0:
        raise EntryNotFound(f"no entry {index}")
    async with pool.acquire() as conn:
        body = await conn.fetchval("SELECT body FROM ledger_transactions WHERE idx = $1", index)
    if body is None:
        raise EntryNotFound(f"no entry {index}")
    body = bytes(body)
    return LedgerEntry(
        index=index,
        canonical=body,
        leaf_hash=leaf_hash(body),
        transaction=TransactionView.of(decode_transaction(body)),
    )


@get("/proof/inclusion", summary="Inclusion proof of entry `index` in the tree of `size`")
async def inclusion(
    pool: NamedDependency[asyncpg.Pool],
    index: Annotated[int, QueryParameter(ge=0, le=_MAX)],
    size: Annotated[int | None, QueryParameter(ge=0, le=_MAX)] = None,
) -> InclusionProof:
    async with pool.acquire() as conn:
        n = await _latest_size(conn) if size is None else size
        await _within_log(conn, n)
        hashes = await db_inclusion_proof(conn, index, n)
    return InclusionProof(leaf_index=index, tree_size=n, hashes=hashes)


@get("/proof/consistency", summary="Consistency proof between trees of `first` and `second`")
async def consistency(
    pool: NamedDependency[asyncpg.Pool],
    first: Annotated[int, QueryParameter(ge=0, le=_MAX)],
    second: Annotated[int | None, QueryParameter(ge=0, le=_MAX)] = None,
) -> ConsistencyProof:
    async with pool.acquire() as conn:
        n = await _latest_size(conn) if second is None else second
        await _within_log(conn, n)
        hashes = await db_consistency_proof(conn, first, n)
    return ConsistencyProof(first=first, second=n, hashes=hashes)


@get("/public-keys", summary="Every checkpoint signing key, oldest first")
async def public_keys(pool: NamedDependency[asyncpg.Pool]) -> PublicKeys:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT key, valid_from_size, announced_in_tx FROM ledger_keys ORDER BY valid_from_size"
        )
        note = await conn.fetchval(
            "SELECT note FROM ledger_checkpoints ORDER BY tree_size DESC LIMIT 1"
        )
    keys = []
    for r in rows:
        v = Verifier.parse(r["key"])
        keys.append(
            PublicKey(
                r["key"], v.name, f"{v.key_id:08x}", r["valid_from_size"], r["announced_in_tx"]
            )
        )
    origin = None if note is None else note.split("\n", 1)[0]
    return PublicKeys(origin=origin, keys=keys)


ledger_router = Router(
    path="/v1/ledger",
    route_handlers=[latest_checkpoint, checkpoints, entry, inclusion, consistency, public_keys],
    tags=["ledger"],
)
