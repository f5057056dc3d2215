"""Providers' endpoints in the database (table `gateway_endpoints`, migration 0008).

Configuration, not ledger state: written directly (as `market.accounts` writes accounts),
never through the sequencer, so the routes claim each signed write's signature with it
(`market.stream_claims.claim_write`: no replay window but the answering gateway's sees
it). The credential is read only to be sent upstream; views never
carry it, and `EndpointRow.__repr__` leaves it out so that no log line can show it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from schemas.errors import DomainError, ErrorKind
from schemas.gateway import EndpointView, Health, RegisterEndpoint


class EndpointExists(DomainError):
    code = "endpoint_exists"
    kind = ErrorKind.CONFLICT


class EndpointNotFound(DomainError):
    code = "endpoint_not_found"
    kind = ErrorKind.NOT_FOUND


class EndpointUnhealthy(DomainError):
    """At registration, `GET {base_url}/models` did not answer as an OpenAI server does."""

    code = "endpoint_unhealthy"
    kind = ErrorKind.REJECTED


@dataclass(frozen=True, slots=True)
class EndpointRow:
    provider: str
    endpoint_id: str
    model: str
    base_url: str
    credential: str | None = field(repr=False)
    max_concurrency: int
    health: Health
    health_detail: str
    checked_ms: int

    def view(self) -> EndpointView:
        return EndpointView(
            endpoint_id=self.endpoint_id, model=self.model, base_url=self.base_url,
            has_credential=self.credential is not None, max_concurrency=self.max_concurrency,
            health=self.health, health_detail=self.health_detail, checked_ms=self.checked_ms,
        )  # fmt: skip


_COLUMNS = (
    "provider, endpoint_id, model, base_url, credential, max_concurrency, health, "
    "health_detail, checked_ms"
)


def _row(record: asyncpg.Record) -> EndpointRow:
    return EndpointRow(
        provider=record["provider"], endpoint_id=record["endpoint_id"], model=record["model"],
        base_url=record["base_url"], credential=record["credential"],
        max_concurrency=record["max_concurrency"], health=Health(record["health"]),
        health_detail=record["health_detail"], checked_ms=record["checked_ms"],
    )  # fmt: skip


async def register(
    conn: asyncpg.Connection, provider: str, req: RegisterEndpoint, checked_ms: int
) -> EndpointRow:
    """Store a new, healthy endpoint (its health was checked by the caller)."""
    row = EndpointRow(
        provider=provider, endpoint_id=req.endpoint_id, model=req.model,
        base_url=req.base_url.rstrip("/"), credential=req.credential,
        max_concurrency=req.max_concurrency, health=Health.HEALTHY, health_detail="",
        checked_ms=checked_ms,
    )  # fmt: skip
    try:
        await conn.execute(
            f"INSERT INTO gateway_endpoints ({_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            row.provider, row.endpoint_id, row.model, row.base_url, row.credential,
            row.max_concurrency, row.health.value, row.health_detail, row.checked_ms,
        )  # fmt: skip
    except asyncpg.UniqueViolationError:
        raise EndpointExists(
            f"endpoint {req.endpoint_id!r} is already registered; delete it first"
        ) from None
    return row


async def endpoints_of(conn: asyncpg.Connection, provider: str) -> list[EndpointRow]:
    records = await conn.fetch(
        f"SELECT {_COLUMNS} FROM gateway_endpoints WHERE provider = $1 ORDER BY endpoint_id",
        provider,
    )
    return [_row(r) for r in records]


async def all_endpoints(conn: asyncpg.Connection) -> list[EndpointRow]:
    records = await conn.fetch(
        f"SELECT {_COLUMNS} FROM gateway_endpoints ORDER BY provider, endpoint_id"
    )
    return [_row(r) for r in records]


async def healthy_endpoints(conn: asyncpg.Connection, model: str) -> list[EndpointRow]:
    """The healthy endpoints serving `model`, of every provider."""
    records = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM gateway_endpoints
            WHERE model = $1 AND health = 'healthy' ORDER BY provider, endpoint_id""",
        model,
    )
    return [_row(r) for r in records]


async def delete(conn: asyncpg.Connection, provider: str, endpoint_id: str) -> None:
    """Remove a provider's endpoint; 404 `endpoint_not_found` for an id not its own."""
    status = await conn.execute(
        "DELETE FROM gateway_endpoints WHERE provider = $1 AND endpoint_id = $2",
        provider,
        endpoint_id,
    )
    if status != "DELETE 1":
        raise EndpointNotFound(f"no endpoint {endpoint_id[:64]!r} of yours")


async def set_health(
    conn: asyncpg.Connection, row: EndpointRow, health: Health, detail: str, checked_ms: int
) -> None:
    """Record a probe of `row` (nothing if it was deleted or re-registered meanwhile)."""
    await conn.execute(
        """UPDATE gateway_endpoints SET health = $4, health_detail = $5, checked_ms = $6
           WHERE provider = $1 AND endpoint_id = $2 AND base_url = $3""",
        row.provider, row.endpoint_id, row.base_url, health.value, detail[:500], checked_ms,
    )  # fmt: skip
