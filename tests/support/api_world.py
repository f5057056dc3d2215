"""A small market on a running server, and a check of answers against the OpenAPI document.

`build_world(db_url, base_url, upstream_url)` makes an operator (straight in the
database), a buyer and a provider (over the API), two instruments, cash, capacity, a
fill, resting orders, a delivery, withdrawals, inference keys and an endpoint on an
`Upstream`, so that the routes have something real to answer about. `Caller`s sign like
`TokexClient`; `undocumented(doc, key, response)` says how an answer breaks what the
document says of that route (nothing: an empty list).

Module-scoped fixtures, for a test module to import (`doc_fixture`, `world_fixture` and
the three they depend on): `world` (on a server and database of the module's own) and
`doc` (the document that server serves).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from market.client import TokexClient
from market.signing import now_ms, sign_request
from schemas.accounts import Role
from schemas.market import Side
from schemas.trading import CreateInstrument, PlaceOrder
from tests.support.pg import PgServer
from tests.support.server import ServerProcess, operator_client
from tests.support.upstream import Upstream

SYM = "llama-3.1-70b/2030-12-01T00Z/1h"  # far ahead: its window is open all along
SYM2 = "llama-3.1-70b/2030-12-02T00Z/1h"  # closed (settled) by the conformance test
MODEL = "llama-3.1-70b"
_ids = itertools.count()


def uid(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


@dataclass
class Caller:
    """One role's signed requests ("anonymous": unsigned), as `TokexClient` signs them."""

    role: str
    client: TokexClient
    http: httpx.AsyncClient
    _last_ms: int = 0

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send `json` (encoded) or `content` (as it is), signed if this caller has a key."""
        body = (
            content if content is not None else b"" if json is None else msgspec.json.encode(json)
        )
        request = self.http.build_request(
            method, path, params=params, content=body,
            headers={"content-type": "application/json"} if body else {},
        )  # fmt: skip
        client = self.client
        if client.private_key is not None and client.key_id is not None:
            self._last_ms = max(now_ms(), self._last_ms + 1)  # no two equal signatures
            target = request.url.raw_path.decode("ascii")
            request.headers.update(
                sign_request(client.private_key, client.key_id, method, target, body, self._last_ms)
            )
        request.headers.update(headers or {})
        return await self.http.send(request)


@dataclass
class World:
    base_url: str
    callers: dict[str, Caller]
    ids: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, role: str) -> Caller:
        return self.callers[role]

    async def aclose(self) -> None:
        for caller in self.callers.values():
            await caller.client.aclose()
        await next(iter(self.callers.values())).http.aclose()


async def build_world(db_url: str, base_url: str, upstream_url: str | None = None) -> World:
    operator = await operator_client(db_url, base_url)
    http = httpx.AsyncClient(base_url=base_url, timeout=30.0)
    for symbol in (SYM, SYM2):
        await operator.create_instrument(
            CreateInstrument(
                symbol=symbol, lot_size=1000, tick_size=5, price_min=5, price_max=100_000,
                maker_fee_bps=10, taker_fee_bps=20, dispute_period_s=3600,
            )
        )  # fmt: skip
    buyer_account = await operator.create_account(Role.BUYER, "buyer")
    provider_account = await operator.create_account(Role.PROVIDER, "provider")
    buyer, provider = operator.as_account(buyer_account), operator.as_account(provider_account)
    await operator.deposit("dep-0", buyer_account.account_id, 10_000_000)
    await provider.list_capacity("cap-0", SYM, 1_000_000)
    await provider.list_capacity("cap-1", SYM2, 10_000)
    await provider.place_order(_order("sell-0", Side.SELL, 10_000, 100))
    await buyer.place_order(_order("buy-0", Side.BUY, 5_000, 100))  # a fill
    resting = [await buyer.place_order(_order(f"rest-{i}", Side.BUY, 1_000, 50)) for i in (0, 1)]
    await provider.report_delivery("rep-0", SYM, buyer_account.account_id, 100)
    await provider.report_delivery("rep-1", SYM, buyer_account.account_id, 100)
    dispute = await buyer.dispute(provider_account.account_id, "rep-1", "not served")
    voucher = buyer.sign_voucher(
        buyer_account.account_id, provider_account.account_id, SYM, tokens=50, version=1
    )
    withdrawals = [await buyer.withdraw(f"wd-{i}", 1_000) for i in (0, 1)]
    key = await buyer.request("POST", "/v1/inference-keys", json={})
    ids: dict[str, Any] = {
        "buyer": buyer_account.account_id,
        "provider": provider_account.account_id,
        "operator": (await operator.me()).account_id,
        "resting_orders": [order.order_id for order in resting],
        "withdrawals": [withdrawal.withdrawal_id for withdrawal in withdrawals],
        "inference_key": key["key_id"],
        "inference_secret": key["secret"],
        "dispute": dispute.dispute_id,
        "voucher": msgspec.to_builtins(voucher),
    }
    spare = await buyer.request("POST", "/v1/inference-keys", json={})
    ids["spare_key"] = spare["key_id"]  # one to revoke
    # request-signing keys to revoke: the buyer its own, the operator the provider's
    ids["buyer_spare_key"] = (await buyer.add_key(Ed25519PrivateKey.generate())).key_id
    ids["provider_spare_key"] = (await provider.add_key(Ed25519PrivateKey.generate())).key_id
    ids["upstream"] = upstream_url
    if upstream_url is not None:
        await provider.request(
            "POST", "/v1/endpoints",
            json={"endpoint_id": "ep-0", "model": MODEL, "base_url": upstream_url},
        )  # fmt: skip
    callers = {
        "anonymous": Caller("anonymous", TokexClient(base_url, http=http), http),
        "buyer": Caller("buyer", buyer, http),
        "provider": Caller("provider", provider, http),
        "operator": Caller("operator", operator, http),
    }
    return World(base_url, callers, ids)


def _order(coid: str, side: Side, quantity: int, price: int) -> PlaceOrder:
    return PlaceOrder(
        client_order_id=coid, instrument=SYM, side=side, quantity=quantity, price=price
    )


# --------------------------------------------------------------------------- fixtures
# Module-scoped: a test module imports them (one server and one world per module).


@pytest.fixture(scope="module", name="upstream")
def upstream_fixture() -> Iterator[Upstream]:
    with Upstream(models=[MODEL]) as up:
        yield up


@pytest.fixture(scope="module", name="module_db")
async def module_db_fixture(pg: PgServer, pg_template: str) -> AsyncIterator[str]:
    async with pg.fresh_database(pg_template) as url:
        yield url


@pytest.fixture(scope="module", name="module_server")
def module_server_fixture(
    module_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    proc = ServerProcess(
        database_url=module_db,
        data_dir=Path(tmp_path_factory.mktemp("conformance")),
        env={
            "TOKEX_RATE_LIMIT": "10000", "TOKEX_RATE_BURST": "10000",
            "TOKEX_ENDPOINT_ALLOW_HOSTS": "127.0.0.1,localhost",
        },
    )  # fmt: skip
    proc.start()
    try:
        yield proc.base_url
    finally:
        proc.stop()


@pytest.fixture(scope="module", name="world")
async def world_fixture(
    module_db: str, module_server: str, upstream: Upstream
) -> AsyncIterator[World]:
    world = await build_world(module_db, module_server, upstream.base_url)
    yield world
    await world.aclose()


@pytest.fixture(scope="module", name="doc")
async def doc_fixture(world: World) -> dict[str, Any]:
    response = await world["anonymous"].call("GET", "/schema/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


# --------------------------------------------------------------------------- checking


def operation_of(doc: dict[str, Any], key: str) -> dict[str, Any]:
    method, path = key.split(" ", 1)
    operation: dict[str, Any] = doc["paths"][path][method.lower()]
    return operation


def undocumented(doc: dict[str, Any], key: str, response: httpx.Response) -> list[str]:
    """How `response` (of the route `key`, "METHOD /path") breaks the document."""
    responses = operation_of(doc, key)["responses"]
    status = str(response.status_code)
    where = f"{key} -> {status} {response.text[:300]!r}"
    if status not in responses:
        return [f"{where}: status not documented (documented: {sorted(responses)})"]
    content = responses[status].get("content")
    if not content:
        return [] if not response.content else [f"{where}: a body where none is documented"]
    media_type = response.headers.get("content-type", "")
    documented = {m.split(";")[0].strip(): spec for m, spec in content.items()}
    spec = documented.get(media_type.split(";")[0].strip())
    if spec is None:
        return [f"{where}: content type {media_type!r} not documented ({sorted(content)})"]
    if not media_type.startswith("application/json"):
        return []
    body = response.json()
    schema = {**spec["schema"], "components": doc["components"]}
    errors = [
        f"{where}: {e.message}" for e in jsonschema_rs.validator_for(schema).iter_errors(body)
    ]
    if errors or response.status_code < 400:
        return errors
    codes = set(spec.get("examples", {}))
    code = body["error"]["code"] if "error" in body else body["code"]
    return [] if code in codes else [f"{where}: code {code!r} not documented ({sorted(codes)})"]
