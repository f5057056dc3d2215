"""Every route answers what /schema/openapi.json says it answers, over a running server.

For each route: a well-formed request sent unsigned and signed as the buyer, the provider
and the operator, then malformed ones (a body that does not decode, ids that do not
exist): each answer's status must be documented for the route, its body must match the
documented schema, and an error's code must be one of the documented codes. Every route
must also have answered a success to some caller, so the check is not only of refusals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from market.keys import public_key_b64
from ops.openapi_errors import OPENAI_ERRORS, ROUTE_ERRORS
from tests.support.api_world import (  # noqa: F401 (the module's fixtures)
    MODEL,
    SYM,
    SYM2,
    Caller,
    World,
    doc_fixture,
    module_db_fixture,
    module_server_fixture,
    uid,
    undocumented,
    upstream_fixture,
    world_fixture,
)

ROLES = ("anonymous", "buyer", "provider", "operator")

#: A well-formed request per route: (path, params, json body) from the world's ids.
Request = tuple[str, dict[str, Any] | None, Any]
GOOD: dict[str, Callable[[World], Request]] = {
    "GET /health": lambda w: ("/health", None, None),
    "GET /v1/ledger/checkpoint": lambda w: ("/v1/ledger/checkpoint", None, None),
    "GET /v1/ledger/checkpoints": lambda w: ("/v1/ledger/checkpoints", {"limit": 5}, None),
    "GET /v1/ledger/entries/{index}": lambda w: ("/v1/ledger/entries/0", None, None),
    "GET /v1/ledger/proof/inclusion": lambda w: ("/v1/ledger/proof/inclusion", {"index": 0}, None),
    "GET /v1/ledger/proof/consistency": lambda w: (
        "/v1/ledger/proof/consistency",
        {"first": 1},
        None,
    ),
    "GET /v1/ledger/public-keys": lambda w: ("/v1/ledger/public-keys", None, None),
    "POST /v1/accounts": lambda w: (
        "/v1/accounts",
        None,
        {"role": "buyer", "name": uid("acct"), "public_key": _new_key()},
    ),
    "GET /v1/accounts/me": lambda w: ("/v1/accounts/me", None, None),
    "GET /v1/accounts/{account_id}": lambda w: (f"/v1/accounts/{w.ids['buyer']}", None, None),
    "POST /v1/accounts/me/keys": lambda w: (
        "/v1/accounts/me/keys",
        None,
        {"public_key": _new_key()},
    ),
    "DELETE /v1/accounts/me/keys/{key_id}": lambda w: (
        f"/v1/accounts/me/keys/{w.ids['buyer_spare_key']}",  # the buyer's: 200, others' 404
        None,
        None,
    ),
    "DELETE /v1/accounts/{account_id}/keys/{key_id}": lambda w: (
        f"/v1/accounts/{w.ids['provider']}/keys/{w.ids['provider_spare_key']}",
        None,
        None,
    ),
    "GET /v1/instruments": lambda w: ("/v1/instruments", None, None),
    "POST /v1/instruments": lambda w: (
        "/v1/instruments",
        None,
        {
            "symbol": f"m-{uid('x')}/2030-12-03T00Z/1h",
            "lot_size": 1000,
            "tick_size": 5,
            "price_min": 5,
            "price_max": 1000,
        },
    ),
    "GET /v1/instruments/{symbol}": lambda w: (f"/v1/instruments/{SYM}", None, None),
    "GET /v1/book": lambda w: ("/v1/book", {"instrument": SYM}, None),
    "GET /v1/trades": lambda w: ("/v1/trades", {"instrument": SYM}, None),
    "POST /v1/deposits": lambda w: (
        "/v1/deposits",
        None,
        {"deposit_id": uid("dep"), "account_id": w.ids["buyer"], "amount": 10},
    ),
    "POST /v1/listings": lambda w: (
        "/v1/listings",
        None,
        {"listing_id": uid("cap"), "instrument": SYM, "quantity": 1000},
    ),
    "GET /v1/balances": lambda w: ("/v1/balances", None, None),
    "POST /v1/orders": lambda w: ("/v1/orders", None, _buy(uid("o"))),
    "POST /v1/orders/batch": lambda w: (
        "/v1/orders/batch",
        None,
        {"orders": [_buy(uid("b")), _buy(uid("b"))]},
    ),
    "GET /v1/orders": lambda w: ("/v1/orders", {"status": "all"}, None),
    "GET /v1/orders/{order_id}": lambda w: (f"/v1/orders/{w.ids['resting_orders'][0]}", None, None),
    "PATCH /v1/orders/{order_id}": lambda w: (
        f"/v1/orders/{w.ids['resting_orders'][0]}",
        None,
        {"quantity": 1000, "price": 45},
    ),
    "DELETE /v1/orders/{order_id}": lambda w: (
        f"/v1/orders/{w.ids['resting_orders'][1]}",
        None,
        None,
    ),
    "POST /v1/orders/cancel-all": lambda w: ("/v1/orders/cancel-all", None, {"instrument": SYM2}),
    "GET /v1/fills": lambda w: ("/v1/fills", {"instrument": SYM}, None),
    "POST /v1/deliveries": lambda w: (
        "/v1/deliveries",
        None,
        {"report_id": uid("rep"), "instrument": SYM, "buyer": w.ids["buyer"], "tokens": 1},
    ),
    "GET /v1/deliveries": lambda w: ("/v1/deliveries", None, None),
    "GET /v1/entitlements": lambda w: ("/v1/entitlements", None, None),
    "GET /v1/settlements": lambda w: ("/v1/settlements", None, None),
    "POST /v1/settlements": lambda w: ("/v1/settlements", None, {"instrument": SYM2}),
    "POST /v1/withdrawals": lambda w: (
        "/v1/withdrawals",
        None,
        {"withdrawal_id": uid("wd"), "amount": 1},
    ),
    "GET /v1/withdrawals": lambda w: ("/v1/withdrawals", None, None),
    "POST /v1/withdrawals/{account_id}/{withdrawal_id}/paid": lambda w: (
        f"/v1/withdrawals/{w.ids['buyer']}/{w.ids['withdrawals'][0]}/paid",
        None,
        None,
    ),
    "POST /v1/withdrawals/{account_id}/{withdrawal_id}/failed": lambda w: (
        f"/v1/withdrawals/{w.ids['buyer']}/{w.ids['withdrawals'][1]}/failed",
        None,
        None,
    ),
    "GET /v1/reports/statement": lambda w: ("/v1/reports/statement", None, None),
    "GET /v1/reports/payouts": lambda w: ("/v1/reports/payouts", {"format": "csv"}, None),
    "GET /v1/reports/instruments/{symbol}": lambda w: (
        f"/v1/reports/instruments/{SYM}",
        None,
        None,
    ),
    "GET /v1/reports/instrument": lambda w: ("/v1/reports/instrument", {"instrument": SYM}, None),
    "GET /v1/reports/fees": lambda w: ("/v1/reports/fees", None, None),
    "GET /v1/reports/trial-balance": lambda w: ("/v1/reports/trial-balance", None, None),
    "POST /v1/endpoints": lambda w: (
        "/v1/endpoints",
        None,
        {"endpoint_id": uid("ep"), "model": MODEL, "base_url": w.ids["upstream"]},
    ),
    "GET /v1/endpoints": lambda w: ("/v1/endpoints", None, None),
    "DELETE /v1/endpoints/{endpoint_id}": lambda w: ("/v1/endpoints/ep-0", None, None),
    "POST /v1/inference-keys": lambda w: ("/v1/inference-keys", None, {"token_budget": 1000}),
    "GET /v1/inference-keys": lambda w: ("/v1/inference-keys", None, None),
    "DELETE /v1/inference-keys/{key_id}": lambda w: (
        f"/v1/inference-keys/{w.ids['spare_key']}",
        None,
        None,
    ),
    "GET /ready": lambda w: ("/ready", None, None),
    "GET /metrics": lambda w: ("/metrics", None, None),
    "GET /v1/currencies": lambda w: ("/v1/currencies", None, None),
    "GET /v1/accounts": lambda w: ("/v1/accounts", None, None),
    "GET /v1/time": lambda w: ("/v1/time", None, None),
    "GET /v1/orders/by-client-id/{client_order_id}": lambda w: (
        "/v1/orders/by-client-id/rest-0",
        None,
        None,
    ),
    "DELETE /v1/orders/by-client-id/{client_order_id}": lambda w: (
        "/v1/orders/by-client-id/buy-0",  # filled already: a documented refusal
        None,
        None,
    ),
    "POST /v1/orders/cancel-after": lambda w: ("/v1/orders/cancel-after", None, {"timeout_ms": 0}),
    "GET /v1/receipts": lambda w: ("/v1/receipts", {"limit": 5}, None),
    "GET /v1/receipts/{receipt_id}": lambda w: (f"/v1/receipts/rcp_{'0' * 24}", None, None),
    "GET /v1/receipts/{receipt_id}/proof": lambda w: (
        f"/v1/receipts/rcp_{'0' * 24}/proof",
        None,
        None,
    ),
    "GET /v1/audit/export": lambda w: ("/v1/audit/export", None, None),
    "GET /v1/delivery-reports": lambda w: ("/v1/delivery-reports", {"status": "all"}, None),
    "POST /v1/vouchers": lambda w: ("/v1/vouchers", None, w.ids["voucher"]),
    "GET /v1/vouchers": lambda w: ("/v1/vouchers", None, None),
    "POST /v1/disputes": lambda w: (
        "/v1/disputes",
        None,
        {"provider": w.ids["provider"], "report_id": "rep-0", "reason": "not served"},
    ),
    "GET /v1/disputes": lambda w: ("/v1/disputes", None, None),
    "POST /v1/disputes/{dispute_id}/resolve": lambda w: (
        f"/v1/disputes/{w.ids['dispute']}/resolve",
        None,
        {"outcome": "refund"},
    ),
    "GET /openai/v1/models": lambda w: ("/openai/v1/models", None, None),
    "POST /openai/v1/chat/completions": lambda w: (
        "/openai/v1/chat/completions",
        None,
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    ),
    "POST /openai/v1/completions": lambda w: (
        "/openai/v1/completions",
        None,
        {"model": MODEL, "prompt": "hi", "max_tokens": 4},
    ),
}

#: More requests of a route, after the good ones: a retry under the same id with another
#: body (409 idempotency_conflict where the route is idempotent per id).
MORE: dict[str, Callable[[World], list[Request]]] = {
    "POST /v1/orders": lambda w: [
        ("/v1/orders", None, {**_buy("same-id"), "price": 20}),
        ("/v1/orders", None, {**_buy("same-id"), "price": 25}),
    ],
    "POST /v1/deposits": lambda w: [
        ("/v1/deposits", None, {"deposit_id": "same", "account_id": w.ids["buyer"], "amount": n})
        for n in (1, 2)
    ],
}

#: Routes whose success needs more than this world has: an entitlement in a window that is
#: open now (SYM's is in 2030). They answer documented refusals here.
NO_SUCCESS_HERE = {
    "POST /openai/v1/chat/completions", "POST /openai/v1/completions",
    # and a receipt, which only a gateway call makes; a filled order, never cancelled
    "GET /v1/receipts/{receipt_id}", "GET /v1/receipts/{receipt_id}/proof",
    "DELETE /v1/orders/by-client-id/{client_order_id}",
}  # fmt: skip

#: Replacements that make a path name nothing (for the 404s of unknown ids).
UNKNOWN = {
    "0": "999999999", SYM: "nope/2030-12-01T00Z/1h", "ep-0": "ep-none",
}  # fmt: skip


def _buy(coid: str) -> dict[str, Any]:
    return {
        "client_order_id": coid,
        "instrument": SYM,
        "side": "buy",
        "quantity": 1000,
        "price": 20,
    }


def _new_key() -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return public_key_b64(Ed25519PrivateKey.generate().public_key())


def _headers(world: World, caller: Caller, key: str) -> dict[str, str]:
    if key.split()[1].startswith("/openai/v1") and caller.role == "buyer":
        return {"authorization": f"Bearer {world.ids['inference_secret']}"}
    return {}


def test_every_route_of_the_error_table_has_a_request_here() -> None:
    assert set(GOOD) == {*ROUTE_ERRORS, *OPENAI_ERRORS}


@pytest.mark.parametrize("key", sorted({*ROUTE_ERRORS, *OPENAI_ERRORS}))
async def test_the_route_answers_only_what_is_documented(
    key: str, world: World, doc: dict[str, Any]
) -> None:
    method = key.split()[0]
    problems: list[str] = []
    statuses: set[int] = set()

    async def send(caller: Caller, path: str, params: dict[str, Any] | None, body: Any) -> None:
        raw = body if isinstance(body, bytes) else None
        json = None if raw is not None else body
        headers = _headers(world, caller, key)
        response = await caller.call(
            method, path, json=json, content=raw, params=params, headers=headers
        )
        statuses.add(response.status_code)
        problems.extend(f"[{caller.role}] {p}" for p in undocumented(doc, key, response))

    path, params, body = GOOD[key](world)
    for role in ROLES:
        fresh_path, fresh_params, fresh_body = GOOD[key](world)  # new ids for each caller
        await send(world[role], fresh_path, fresh_params, fresh_body)
    for role in ("buyer", "provider", "operator"):
        for more_path, more_params, more_body in MORE.get(key, lambda w: [])(world):
            await send(world[role], more_path, more_params, more_body)
        if body is not None:
            await send(world[role], path, params, b'{"quantity": "12"')  # does not decode
            await send(world[role], path, params, {"unknown_field": 1})
        for known, unknown in UNKNOWN.items():
            if "{" in key and known in path:
                await send(world[role], path.replace(known, unknown), params, body)
    assert not problems, "\n".join(problems)
    if key not in NO_SUCCESS_HERE:
        assert any(200 <= s < 300 for s in statuses), f"{key}: no success in {sorted(statuses)}"


async def test_answers_made_before_any_route_keep_the_shape_of_the_routes_path(
    world: World, doc: dict[str, Any]
) -> None:
    """The middleware's refusals (a NUL in the query) answer /openai/v1 in OpenAI's shape
    and every other path in tokex's, as the document says."""
    openai = await world["buyer"].call(
        "GET",
        "/openai/v1/models?x=%00",
        headers=_headers(world, world["buyer"], "GET /openai/v1/models"),
    )
    assert openai.status_code == 400
    assert openai.json()["error"]["code"] == "invalid_request"
    assert undocumented(doc, "GET /openai/v1/models", openai) == []
    tokex = await world["buyer"].call("GET", "/v1/balances?x=%00")
    assert tokex.status_code == 400 and tokex.json()["code"] == "invalid_request"
    assert undocumented(doc, "GET /v1/balances", tokex) == []


@pytest.mark.parametrize("key", sorted(OPENAI_ERRORS))
async def test_the_gateway_refuses_a_query_string_as_documented(
    key: str, world: World, doc: dict[str, Any]
) -> None:
    """The gateway's routes take no query parameters: one, or one given twice, is 400
    `unknown_query_parameter` in OpenAI's shape on each (the metered calls' lean path
    once ignored it), and the document lists that code."""
    method = key.split()[0]
    path, _, body = GOOD[key](world)
    headers = _headers(world, world["buyer"], key)
    for params in ({"foo": "1"}, {"foo": ["1", "2"]}):
        response = await world["buyer"].call(
            method, path, json=body, params=params, headers=headers
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "unknown_query_parameter"
        assert undocumented(doc, key, response) == []
