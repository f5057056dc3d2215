"""Integers strictly on the wire (`ops.wire`), against a real `tokex serve`: `"10"`, `10.0`,
`1e3`, `"1e3"` and booleans are refused (400 `invalid_request` naming the field) wherever
money or a quantity is sent, and nothing is applied; JSON integers go through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
import pytest
from litestar import Litestar, get
from litestar.testing import TestClient

from market.client import TokexApiError, TokexClient
from ops.errors import exception_handlers
from ops.wire import strict_query
from schemas.accounts import Role
from schemas.market import Side
from schemas.trading import CreateInstrument, PlaceOrder
from tests.support.server import ServerProcess, operator_client

SYM = "strict-model/2030-12-01T00Z/1h"

#: Each lenient form of 1000 (or 10), as raw JSON, and the type msgspec names for it.
LENIENT = [('"10"', "str"), ("10.0", "float"), ("1e3", "float"), ('"1e3"', "str"),
           ("true", "bool")]  # fmt: skip


@dataclass
class Parties:
    operator: TokexClient
    provider: TokexClient
    buyer: TokexClient
    buyer_id: str


@pytest.fixture
async def parties(db_url: str, server_process: ServerProcess) -> AsyncIterator[Parties]:
    operator = await operator_client(db_url, server_process.base_url)
    await operator.create_instrument(
        CreateInstrument(symbol=SYM, lot_size=10, tick_size=5, price_min=5, price_max=100_000)
    )
    provider = operator.as_account(await operator.create_account(Role.PROVIDER, "p"))
    created = await operator.create_account(Role.BUYER, "b")
    buyer = operator.as_account(created)
    await provider.list_capacity("cap-0", SYM, 1_000)
    await operator.deposit("dep-0", created.account_id, 1_000_000)
    yield Parties(operator, provider, buyer, created.account_id)
    await operator.aclose()


async def refused(client: TokexClient, method: str, path: str, raw: str) -> TokexApiError:
    with pytest.raises(TokexApiError) as info:
        await client.request(method, path, json=msgspec.Raw(raw.encode()))
    return info.value


def bodies(parties: Parties) -> list[tuple[TokexClient, str, str, str, str]]:
    """(client, method, path, JSON body with {v} for the number, the field's JSON path);
    the expected type is `int` (`int | null` for the optional price)."""
    p = parties
    return [
        (p.buyer, "POST", "/v1/orders", '{"client_order_id": "o1", "instrument": "' + SYM
         + '", "side": "buy", "quantity": {v}, "price": 5}', "$.quantity"),
        (p.buyer, "POST", "/v1/orders", '{"client_order_id": "o2", "instrument": "' + SYM
         + '", "side": "buy", "quantity": 10, "price": {v}}', "$.price"),
        (p.buyer, "POST", "/v1/orders/batch", '{"orders": [{"client_order_id": "o3", '
         '"instrument": "' + SYM + '", "side": "buy", "quantity": {v}, "price": 5}]}',
         "$.orders[0].quantity"),
        (p.operator, "POST", "/v1/deposits", '{"deposit_id": "d1", "account_id": "'
         + p.buyer_id + '", "amount": {v}}', "$.amount"),
        (p.provider, "POST", "/v1/listings", '{"listing_id": "l1", "instrument": "' + SYM
         + '", "quantity": {v}}', "$.quantity"),
        (p.buyer, "POST", "/v1/withdrawals", '{"withdrawal_id": "w1", "amount": {v}}',
         "$.amount"),
        (p.provider, "POST", "/v1/deliveries", '{"report_id": "r1", "instrument": "' + SYM
         + '", "buyer": "' + p.buyer_id + '", "tokens": {v}}', "$.tokens"),
    ]  # fmt: skip


async def test_lenient_numbers_are_refused_naming_the_field(parties: Parties) -> None:
    before = await parties.buyer.balances()
    for client, method, path, template, field in bodies(parties):
        for raw, got in LENIENT:
            error = await refused(client, method, path, template.replace("{v}", raw))
            assert (error.status, error.code) == (400, "invalid_request"), (path, raw, error)
            expected = "int | null" if field == "$.price" else "int"
            assert error.message == f"Expected `{expected}`, got `{got}` - at `{field}`", error
    assert await parties.buyer.balances() == before  # nothing was applied
    assert await parties.buyer.orders() == []


async def test_json_integers_go_through(parties: Parties) -> None:
    order = await parties.buyer.request(
        "POST", "/v1/orders", json=msgspec.Raw(
            b'{"client_order_id": "ok", "instrument": "' + SYM.encode()
            + b'", "side": "buy", "quantity": 10, "price": 5}'
        ),
    )  # fmt: skip
    assert order["quantity"] == 10 and order["price"] == 5
    assert (await parties.buyer.place_order(
        PlaceOrder(client_order_id="ok2", instrument=SYM, side=Side.BUY, quantity=20, price=5)
    )).quantity == 20  # fmt: skip
    receipt = await parties.operator.request(
        "POST", "/v1/deposits",
        json={"deposit_id": "d-int", "account_id": parties.buyer_id, "amount": 1000},
    )  # fmt: skip
    assert receipt["ledger_index"] > 0


async def test_amend_and_instrument_fields_are_strict(parties: Parties) -> None:
    order = await parties.buyer.place_order(
        PlaceOrder(client_order_id="am", instrument=SYM, side=Side.BUY, quantity=10, price=5)
    )
    for raw, got in LENIENT:
        error = await refused(
            parties.buyer, "PATCH", f"/v1/orders/{order.order_id}", '{"quantity": ' + raw + "}"
        )
        assert error.message == f"Expected `int | null`, got `{got}` - at `$.quantity`", error
        error = await refused(
            parties.operator, "POST", "/v1/instruments",
            '{"symbol": "x/2031-01-01T00Z/1h", "lot_size": ' + raw + ', "tick_size": 1, '
            '"price_min": 1, "price_max": 10}',
        )  # fmt: skip
        assert error.message == f"Expected `int`, got `{got}` - at `$.lot_size`", error
    assert (await parties.buyer.order(order.order_id)).quantity == 10


@pytest.mark.parametrize("value", ["1e3", "10.0", "+5", "0x10", "1_000", " 5", "true", ""])
async def test_integer_query_parameters_are_decimal_digits(parties: Parties, value: str) -> None:
    with pytest.raises(TokexApiError) as info:
        await parties.buyer.request("GET", "/v1/orders", params={"limit": value})
    assert (info.value.status, info.value.code) == (400, "invalid_request")
    assert info.value.message == "Expected `int`, got `str` (query limit)"


async def test_decimal_query_integers_still_work(parties: Parties) -> None:
    assert await parties.buyer.request("GET", "/v1/orders", params={"limit": "10"}) == {
        "items": [],
        "next_cursor": None,
        "prev_cursor": None,
    }
    with pytest.raises(TokexApiError) as info:  # the route's own limits, as before
        await parties.buyer.request("GET", "/v1/orders", params={"limit": "0"})
    assert info.value.status == 400


@pytest.mark.parametrize("written", ["0_{id}", "+{id}", "{arabic}", "0{id}0000000000000000000"])
async def test_an_integer_path_id_is_decimal_digits_not_another_order(
    parties: Parties, written: str
) -> None:
    """Found in review: Litestar's `:int` takes what `int()` takes, so `DELETE
    /v1/orders/0_3` cancelled order 3 (and Arabic-Indic digits read as the order too)."""
    order = await parties.buyer.place_order(PlaceOrder(
        client_order_id="keep", instrument=SYM, side=Side.BUY, quantity=10, price=5,
    ))  # fmt: skip
    arabic = "".join(chr(0x0660 + int(d)) for d in str(order.order_id))
    path = "/v1/orders/" + written.format(id=order.order_id, arabic=arabic)
    for method in ("GET", "DELETE"):
        with pytest.raises(TokexApiError) as info:
            await parties.buyer.request(method, path)
        assert (info.value.status, info.value.code) == (400, "invalid_request")
        assert "path parameter order_id must be decimal digits" in info.value.message
    assert (await parties.buyer.order(order.order_id)).status == "open"


async def test_a_query_parameter_given_twice_and_an_unknown_status_are_refused(
    parties: Parties,
) -> None:
    """Found in review: the last of `?limit=1&limit=1000` won, and `status=opne` listed
    nothing rather than answering 400."""
    with pytest.raises(TokexApiError) as twice:
        await parties.buyer.request("GET", "/v1/orders", params=[("limit", "1"), ("limit", "2")])
    assert (twice.value.status, twice.value.code) == (400, "invalid_request")
    assert "given more than once" in twice.value.message
    with pytest.raises(TokexApiError) as typo:
        await parties.buyer.request("GET", "/v1/orders", params={"status": "opne"})
    assert typo.value.status == 400


async def test_a_nul_in_a_body_string_is_a_400_not_a_failed_batch(parties: Parties) -> None:
    """Found in review: a dispute `reason` holding a NUL reached PostgreSQL inside the
    sequencer's batch, which failed with 503 for every request in it."""
    error = await refused(parties.buyer, "POST", "/v1/withdrawals",
                          '{"withdrawal_id": "w\\u0000", "amount": 10}')  # fmt: skip
    assert (error.status, error.code) == (400, "invalid_request")
    body = '{"provider": "p", "report_id": "r", "reason": "bad\\u0000"}'
    error = await refused(parties.buyer, "POST", "/v1/disputes", body)
    assert (error.status, error.code) == (400, "invalid_request")


async def test_a_body_nested_too_deeply_is_a_400_not_a_500(parties: Parties) -> None:
    """msgspec raises RecursionError (not DecodeError) on arrays nested deeper than
    Python's recursion limit (the gateway's body decoder answered 500 for it). Here each
    body type forbids unknown fields and has no field of any type, so the strict decoder
    refuses such a body (ValidationError) before it nests: this keeps it so."""
    deep = "[" * 20_000 + "]" * 20_000  # within the 64 KiB a body may be
    for raw in (deep, '{"withdrawal_id": "w1", "amount": 10, "x": ' + deep + "}",
                '{"withdrawal_id": "w\\u0000", "amount": 10, "x": ' + deep + "}"):  # fmt: skip
        error = await refused(parties.buyer, "POST", "/v1/withdrawals", raw)
        assert (error.status, error.code) == (400, "invalid_request")


async def test_a_lot_larger_than_a_provider_may_list_is_refused(parties: Parties) -> None:
    """Found in review: a lot of 2**62 was accepted, but a provider may list at most 10**15
    tokens of an instrument, so no lot of it could ever trade."""
    body = (
        '{"symbol": "x/2031-01-01T00Z/1h", "lot_size": %d, "tick_size": 1, '
        '"price_min": 1, "price_max": 10}'
    )
    error = await refused(parties.operator, "POST", "/v1/instruments", body % (10**15 + 1))
    assert error.message == "Expected `int` <= 1000000000000000 - at `$.lot_size`", error
    made = await parties.operator.request(
        "POST", "/v1/instruments", json=msgspec.Raw((body % 10**15).encode())
    )
    assert made["lot_size"] == 10**15


def test_strict_query_on_litestars_own_options_handler_is_a_400_not_a_500() -> None:
    """Litestar's OPTIONS handlers cannot be weakly referenced (the caches of `ops.wire`
    are keyed so): a query on one is refused like any other route's, never a 500. (The
    exchange's app answers OPTIONS before this, `ops.middleware.AnswerOptions`.)"""

    @get("/x", sync_to_thread=False)
    def x() -> None:
        return None

    app = Litestar([x], before_request=strict_query, exception_handlers=exception_handlers())
    with TestClient(app) as client:
        response = client.options("/x?y=1")
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "unknown_query_parameter"
