"""`GET /v1/audit/export`: the audit file of a range of the ledger, over HTTP.

The same `tokex-audit/v3` file `tokex audit export` writes from the database (the same
function, `ledger.audit.export`, in one repeatable-read snapshot, with the receipts of
the range's gateway deliveries), so `tokex audit export --from-url URL` gives an outside
auditor a file byte-identical to the one the operator would export, with no database
access, to verify offline against a key it trusts. Signed, for operators and auditors
only: the receipts in it are private to their buyers and providers (the ledger's own
entries, checkpoints and proofs stay public under `/v1/ledger`).

The file is built before the answer starts (in a spooled temporary file: memory up to
`SPOOL_BYTES`, then disk), so a range with nothing signed in it is a clean 404
`audit_export_empty` rather than a cut stream; then it is streamed. At most
`MAX_EXPORTS` run at once (each holds a snapshot and a connection); beyond that 503
`audit_export_busy` with Retry-After.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from typing import IO, Annotated, BinaryIO, cast

import asyncpg
from litestar import Router, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.response import Stream

from ledger.audit.export import export
from market.auth import requires_role
from market.gateway.receipts import delivery_receipts
from schemas.accounts import Role
from schemas.errors import DomainError, ErrorKind

__all__ = ["MAX_EXPORTS", "audit_router"]

MAX_EXPORTS = 2
SPOOL_BYTES = 16 * 1024 * 1024
CHUNK_BYTES = 256 * 1024

_running = asyncio.Semaphore(MAX_EXPORTS)


class AuditExportBusy(DomainError):
    code = "audit_export_busy"
    kind = ErrorKind.UNAVAILABLE


Index = Annotated[int, QueryParameter(ge=0, le=2**62)]
MaybeIndex = Annotated[int | None, QueryParameter(ge=0, le=2**62)]


@get(
    "/export", guards=[requires_role(Role.OPERATOR, Role.AUDITOR)],
    media_type="application/octet-stream",
    summary="The audit file (tokex-audit/v3) of entries [from_index, to_index)",
)  # fmt: skip
async def audit_export(
    pool: NamedDependency[asyncpg.Pool], from_index: Index = 0, to_index: MaybeIndex = None
) -> Stream:
    """What `tokex audit export` writes from the database for the same range: entries,
    checkpoints, keys, balances and receipts; `to_index` (default: the latest checkpoint)
    is rounded down to a checkpoint."""
    if _running.locked():
        raise AuditExportBusy("audit exports are running; retry shortly")
    async with _running:
        # closed by `_chunks` once streamed (or below, if the export fails)
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
        try:
            async with pool.acquire() as conn:
                out = cast(BinaryIO, spool)  # a SpooledTemporaryFile is a binary file
                await export(conn, out, from_index, to_index, receipts=delivery_receipts)
        except BaseException:
            spool.close()
            raise
    spool.seek(0)
    return Stream(_chunks(spool), media_type="application/octet-stream")


async def _chunks(spool: IO[bytes]) -> AsyncIterator[bytes]:
    try:
        while chunk := spool.read(CHUNK_BYTES):
            yield chunk
    finally:
        spool.close()


audit_router = Router("/v1/audit", route_handlers=[audit_export], tags=["audit"])
