"""`tokex serve --workers 2`: gateway processes in front of the sequencer process, over NATS.

The whole end-to-end suite runs against `--workers 2` with TOKEX_TEST_SERVE_WORKERS=2
(tests/support/server.py); here, in every run, the wire between the processes, the
end-to-end test of the book over REST and the websocket, a signed command replayed
through both gateways, and a gateway killed under load.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
import typing
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import connect as ws_connect

from market.client import TokexClient
from market.keys import load_private_key, public_key_b64
from market.sequencer import ExchangeBusy, PlaceOp
from market.sequencer.queries import AnyQuery, BookQuery, Query
from market.sequencer.remote import RemoteSequencer, SequencerUnreachable
from market.sequencer.wire import Answer, BadCommand, Codec, ErrorWire, RemoteError, Reply, encode
from market.signing import now_ms, sign_request
from ops.bus import EmbeddedNats, close, connect
from schemas.accounts import Role
from schemas.errors import DomainError, ErrorKind
from schemas.market import Side
from schemas.trading import BookView, CreateInstrument, OrderView, PlaceOrder
from tests.market.test_stream_e2e import test_rest_book_equals_websocket_book
from tests.support.pg import PgServer
from tests.support.server import ServerProcess, operator_client
from tests.support.upstream import Upstream

__all__ = ["test_rest_book_equals_websocket_book"]

SYM = "llama-3.1-70b/2030-12-01T00Z/1h"
MODEL = "llama-3.1-70b"


@pytest.fixture
def server_process(db_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """The end-to-end test imported above runs against this one: two gateways."""
    proc = ServerProcess(
        database_url=db_url,
        data_dir=tmp_path,
        extra_args=("--workers", "2"),
        env={"TOKEX_RATE_LIMIT": "10000", "TOKEX_RATE_BURST": "10000"},
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


# -- the wire ------------------------------------------------------------------------------


def test_an_error_crosses_as_its_own_class_so_it_maps_to_the_same_response() -> None:
    busy = ErrorWire.of(ExchangeBusy("the exchange is busy")).error()
    assert type(busy) is ExchangeBusy
    assert (busy.code, busy.kind, busy.message) == ("exchange_busy", ErrorKind.UNAVAILABLE,
                                                    "the exchange is busy")  # fmt: skip
    refused = DomainError("no funds", code="insufficient_funds")
    refused.kind = ErrorKind.REJECTED
    wire = msgspec.msgpack.decode(encode(ErrorWire.of(refused)), type=ErrorWire)
    assert (wire.error().code, wire.error().kind) == ("insufficient_funds", ErrorKind.REJECTED)
    unknown = ErrorWire("elsewhere", "Gone", "gone", "not_found", "gone away").error()
    assert isinstance(unknown, RemoteError)
    assert (unknown.code, unknown.kind) == ("gone", ErrorKind.NOT_FOUND)


def test_ops_and_their_answers_decode_into_their_own_types() -> None:
    codec = Codec()
    op = PlaceOp("acc_1", PlaceOrder(client_order_id="c1", instrument=SYM, side=Side.BUY,
                                     quantity=1000, price=5))  # fmt: skip
    (back,) = codec.ops("PlaceOp", encode([op]))
    assert back == op
    refused = ErrorWire.of(ExchangeBusy("busy"))
    answer = codec.answer("PlaceOp", encode(Answer[OrderView](replies=[Reply(error=refused)])))
    assert answer.replies[0].error == refused
    book = BookView(instrument=SYM, seq=3, bids=[], asks=[])
    assert BookQuery.result_type() is BookView
    payload = encode(Answer(replies=[Reply(value=book)]))
    decoded = msgspec.msgpack.decode(payload, type=Answer[BookView])
    assert decoded.replies[0].value == book
    with pytest.raises(TypeError):
        Query.result_type()
    # a gateway of another version: refused as such, not a lost request
    with pytest.raises(BadCommand):
        codec.ops("NoSuchOp", encode([]))
    with pytest.raises(BadCommand):
        codec.ops("PlaceOp", encode([{"account_id": 1}]))


async def test_no_sequencer_on_the_bus_is_a_503_at_once(tmp_path: Path) -> None:
    """The embedded NATS, and a gateway's command with no sequencer process to answer it:
    503 `sequencer_unreachable` (Retry-After, by its kind) rather than a hang."""
    embedded = EmbeddedNats(tmp_path)
    try:
        nats = await connect(embedded.url, name="test", token=embedded.token)
        remote = RemoteSequencer(nats, timeout_s=5.0)
        began = time.monotonic()
        with pytest.raises(SequencerUnreachable) as refused:
            await remote.submit(PlaceOp("acc_1", PlaceOrder(
                client_order_id="c1", instrument=SYM, side=Side.BUY, quantity=1000, price=5
            )))  # fmt: skip
        assert refused.value.kind is ErrorKind.UNAVAILABLE
        assert time.monotonic() - began < 2.0  # "no responders" at once, not the timeout
        assert remote.healthy
        await close(nats)
    finally:
        embedded.stop()


# -- one server with two gateways: a replayed command, then a gateway killed under load


class Workers:
    def __init__(self, proc: ServerProcess, db_url: str, operator: TokexClient) -> None:
        self.proc, self.db_url, self.operator = proc, db_url, operator

    async def buyer(self, name: str) -> TokexClient:
        """A funded buyer with its own connections."""
        created = await self.operator.create_account(Role.BUYER, name)
        await self.operator.deposit(f"dep-{name}", created.account_id, 10_000_000)
        assert created.private_key is not None
        key = load_private_key(created.private_key)
        return TokexClient(self.proc.base_url, created.key_id, key)


async def _both_gateways_up(proc: ServerProcess) -> None:
    """Healthy is one gateway up; a request signed before the other started would be
    refused by it as `stale_timestamp` (its replay window starts empty)."""
    deadline = time.monotonic() + 30
    while proc.log_path.read_text().count("Application startup complete") < 2:
        assert time.monotonic() < deadline, proc.log()
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def workers(pg: PgServer, pg_template: str, tmp_path_factory: pytest.TempPathFactory
                  ) -> AsyncIterator[Workers]:  # fmt: skip
    async with pg.fresh_database(pg_template) as url:
        proc = ServerProcess(
            database_url=url,
            data_dir=tmp_path_factory.mktemp("workers"),
            extra_args=("--workers", "2"),
            env={
                "TOKEX_RATE_LIMIT": "10000",
                "TOKEX_RATE_BURST": "10000",
                "TOKEX_ENDPOINT_ALLOW_HOSTS": "127.0.0.1,localhost",
            },
        )
        proc.start()
        await _both_gateways_up(proc)
        operator = await operator_client(url, proc.base_url)
        await operator.create_instrument(
            CreateInstrument(symbol=SYM, lot_size=1000, tick_size=5, price_min=5,
                             price_max=100_000, maker_fee_bps=10, taker_fee_bps=20)
        )  # fmt: skip
        try:
            yield Workers(proc, url, operator)
        finally:
            await operator.aclose()
            proc.stop()


def test_every_query_says_a_type_its_answer_decodes_into() -> None:
    for kind in typing.get_args(AnyQuery):
        msgspec.msgpack.Decoder(kind.result_type())  # a string (forward) reference fails here


async def test_ready_and_health_through_a_gateway(workers: Workers) -> None:
    async with httpx.AsyncClient(base_url=workers.proc.base_url) as client:
        for _ in range(4):  # new connections: the kernel spreads them over the gateways
            ready = await client.get("/ready", headers={"Connection": "close"})
            assert ready.status_code == 200, ready.text
            assert ready.json()["status"] == "ready"
            assert type(ready.json()["ledger_size"]) is int
            assert (await client.get("/health")).status_code == 200


async def test_a_signed_command_replayed_through_every_gateway_is_taken_once(
    workers: Workers,
) -> None:
    buyer = await workers.buyer("replayer")
    assert buyer.private_key is not None and buyer.key_id is not None
    order = PlaceOrder(client_order_id="once", instrument=SYM, side=Side.BUY, quantity=1000,
                       price=5)  # fmt: skip
    statuses = await _sent_eight_times(workers, buyer, "/v1/orders", msgspec.json.encode(order))
    assert statuses[0][0] == 201
    assert statuses[1:] == [(401, "replayed_signature")] * 7
    await buyer.aclose()


async def test_an_orders_subscribe_sent_to_any_gateway_with_cancel_on_disconnect_is_refused(
    workers: Workers,
) -> None:
    """Each gateway has its own replay window, but the subscribe's signature covers its
    parameters: the owner's subscribe sent again, on either gateway, with
    `cancel_on_disconnect: true` is `bad_signature`, and hanging up cancels nothing.
    (Found by a review: the signature covered `GET /v1/stream` and an empty body only.)"""
    buyer = await workers.buyer("ws-replayed")
    await buyer.place_order(PlaceOrder(client_order_id="rest", instrument=SYM, side=Side.BUY,
                                       quantity=1000, price=5))  # fmt: skip
    honest = buyer.orders_subscribe()
    url = workers.proc.base_url.replace("http://", "ws://") + "/v1/stream"
    async with ws_connect(url) as owner:
        await owner.send(json.dumps(honest))
        assert json.loads(await owner.recv())["type"] == "subscribed"
        codes: list[str] = []
        for _ in range(8):  # new connections: the kernel spreads them over the gateways
            async with ws_connect(url) as attacker:
                await attacker.send(json.dumps({**honest, "cancel_on_disconnect": True}))
                frame = json.loads(await asyncio.wait_for(attacker.recv(), 5))
                codes.append(frame.get("code", frame["type"]))
        await asyncio.sleep(0.5)
        open_orders = await buyer.orders()
    assert codes == ["bad_signature"] * 8
    assert [o.client_order_id for o in open_orders] == ["rest"]
    await buyer.aclose()


async def test_an_orders_subscribe_replayed_unchanged_to_other_gateways_is_refused(
    workers: Workers,
) -> None:
    """The same signed subscribe, unchanged, sent on new connections (spread over both
    gateways): the first is subscribed, every other one `replayed_signature`, whichever
    gateway it reaches (its signature is claimed in the database, not only in one
    gateway's replay window), and hanging them up cancels nothing."""
    buyer = await workers.buyer("ws-replayed-same")
    await buyer.place_order(PlaceOrder(client_order_id="rest-same", instrument=SYM, side=Side.BUY,
                                       quantity=1000, price=5))  # fmt: skip
    signed = json.dumps(buyer.orders_subscribe(cancel_on_disconnect=True))
    url = workers.proc.base_url.replace("http://", "ws://") + "/v1/stream"
    async with ws_connect(url) as owner:
        await owner.send(signed)
        assert json.loads(await owner.recv())["type"] == "subscribed"
        codes: list[str] = []
        for _ in range(8):
            async with ws_connect(url) as attacker:
                await attacker.send(signed)
                frame = json.loads(await asyncio.wait_for(attacker.recv(), 5))
                codes.append(frame.get("code", frame["type"]))
        await asyncio.sleep(0.5)
        open_orders = await buyer.orders()
    assert codes == ["replayed_signature"] * 8
    assert [o.client_order_id for o in open_orders] == ["rest-same"]
    await buyer.aclose()


async def test_a_signed_key_creation_replayed_through_every_gateway_makes_one_key(
    workers: Workers,
) -> None:
    """Written by the gateway itself, not by the sequencer: the database refuses the
    replay (the key keeps its request's signature, unique), not the sequencer's window.
    Whoever saw the signed request gets no bearer secret of their own."""
    buyer = await workers.buyer("key-replayer")
    assert buyer.private_key is not None and buyer.key_id is not None
    statuses = await _sent_eight_times(workers, buyer, "/v1/inference-keys", b"{}")
    assert statuses[0][0] == 201
    assert statuses[1:] == [(401, "replayed_signature")] * 7, statuses
    assert len(await buyer.request("GET", "/v1/inference-keys")) == 1
    await buyer.aclose()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(models=[MODEL]) as up:
        yield up


async def test_a_captured_endpoint_write_replayed_through_every_gateway_changes_nothing(
    workers: Workers, upstream: Upstream
) -> None:
    """An endpoint is written by the gateway itself: a captured delete replayed after the
    provider registered the endpoint again does not remove the new one, and a captured
    registration replayed after a delete does not bring the old URL back, on either
    gateway (the signature is claimed in the database). Found by a review."""
    created = await workers.operator.create_account(Role.PROVIDER, "ep-replayed")
    provider = workers.operator.as_account(created)
    old = msgspec.json.encode({"endpoint_id": "ep-1", "model": MODEL,
                               "base_url": upstream.base_url})  # fmt: skip
    new_url = upstream.base_url.replace("127.0.0.1", "localhost")
    register = _signed(provider, "POST", "/v1/endpoints", old)
    remove = _signed(provider, "DELETE", "/v1/endpoints/ep-1", b"")
    assert (await _sent(workers, register, 1))[0][0] == 201
    assert (await _sent(workers, remove, 1))[0][0] == 204
    again = {"endpoint_id": "ep-1", "model": MODEL, "base_url": new_url}
    await provider.request("POST", "/v1/endpoints", json=again)
    assert await _sent(workers, remove, 8) == [(401, "replayed_signature")] * 8
    endpoints = await provider.request("GET", "/v1/endpoints")
    assert [(e["endpoint_id"], e["base_url"]) for e in endpoints] == [("ep-1", new_url)]
    await provider.request("DELETE", "/v1/endpoints/ep-1")
    assert await _sent(workers, register, 8) == [(401, "replayed_signature")] * 8
    assert await provider.request("GET", "/v1/endpoints") == []


async def test_signed_account_and_key_writes_replayed_through_every_gateway_are_taken_once(
    workers: Workers,
) -> None:
    """Accounts, signing keys and inference keys are written by the gateway itself: the
    same signed request again, on either gateway, is 401 `replayed_signature`, not a 409
    or a second 200 (each signature is claimed in the database)."""
    buyer = await workers.buyer("keys-replayed")
    spare = Ed25519PrivateKey.generate()
    add = _signed(buyer, "POST", "/v1/accounts/me/keys",
                  msgspec.json.encode({"public_key": public_key_b64(spare)}))  # fmt: skip
    added = await _sent(workers, add, 8)
    assert added[0][0] == 201 and added[1:] == [(401, "replayed_signature")] * 7, added
    spare_id = (await buyer.request("GET", "/v1/accounts/me"))["key_ids"][-1]
    revoke = _signed(buyer, "DELETE", f"/v1/accounts/me/keys/{spare_id}", b"")
    revoked = await _sent(workers, revoke, 8)
    assert revoked[0][0] == 200 and revoked[1:] == [(401, "replayed_signature")] * 7, revoked
    inference = await buyer.request("POST", "/v1/inference-keys", json={})
    drop = _signed(buyer, "DELETE", f"/v1/inference-keys/{inference['key_id']}", b"")
    dropped = await _sent(workers, drop, 8)
    assert dropped[0][0] == 200 and dropped[1:] == [(401, "replayed_signature")] * 7, dropped
    fresh_key = public_key_b64(Ed25519PrivateKey.generate())
    account = msgspec.json.encode({"role": "buyer", "name": "made-once", "public_key": fresh_key})
    made = await _sent(workers, _signed(workers.operator, "POST", "/v1/accounts", account), 8)
    assert made[0][0] == 201 and made[1:] == [(401, "replayed_signature")] * 7, made
    await buyer.aclose()


Signed = tuple[str, str, bytes, dict[str, str]]


def _signed(client: TokexClient, method: str, path: str, body: bytes) -> Signed:
    """A request signed by `client` now, as an observer would capture it."""
    assert client.private_key is not None and client.key_id is not None
    headers = {"Content-Type": "application/json", **sign_request(
        client.private_key, client.key_id, method, path, body, now_ms()
    )}  # fmt: skip
    return method, path, body, headers


async def _sent(workers: Workers, request: Signed, times: int) -> list[tuple[int, str]]:
    """`request` sent `times` times, each on a new connection (the kernel spreads them
    over the gateways): (status, code) of each answer."""
    method, path, body, headers = request
    statuses: list[tuple[int, str]] = []
    for _ in range(times):
        async with httpx.AsyncClient(base_url=workers.proc.base_url) as fresh:
            response = await fresh.request(method, path, content=body, headers=headers)
        code = response.json().get("code", "") if response.content else ""
        statuses.append((response.status_code, code))
    return statuses


async def _sent_eight_times(
    workers: Workers, client: TokexClient, path: str, body: bytes
) -> list[tuple[int, str]]:
    """One signed POST sent 8 times, each on a new connection: (status, code) of each."""
    return await _sent(workers, _signed(client, "POST", path, body), 8)


# -- a gateway killed under load -----------------------------------------------------------


def _gateway_pids(proc: ServerProcess) -> dict[int, int]:
    """The gateway processes the server's log says it started: slot -> newest pid."""
    started = re.findall(r"gateway (\d+) started \(pid (\d+)\)", proc.log_path.read_text())
    return {int(slot): int(pid) for slot, pid in started}


async def _load(
    client: TokexClient, name: str, until: float, acked: list[tuple[float, str]]
) -> int:
    """Place resting buys until `until`; a broken connection is retried with the same
    client_order_id (idempotent). Returns how many attempts failed."""
    failures, n = 0, 0
    while time.monotonic() < until:
        coid = f"{name}-{n}"
        for _ in range(50):
            try:
                order = PlaceOrder(
                    client_order_id=coid, instrument=SYM, side=Side.BUY, quantity=1000, price=5
                )
                await client.place_order(order)
                acked.append((time.monotonic(), coid))
                break
            except httpx.TransportError:
                failures += 1
                await asyncio.sleep(0.02)
        n += 1
    return failures


async def test_a_killed_gateway_is_replaced_while_the_other_keeps_answering(
    workers: Workers,
) -> None:
    proc, db_url = workers.proc, workers.db_url
    # each its own connections, so some are on the gateway that dies
    buyers = [await workers.buyer(f"buyer-{i}") for i in range(4)]
    before = _gateway_pids(proc)
    assert len(before) == 2
    acked: list[tuple[float, str]] = []
    until = time.monotonic() + 4.0
    load = [asyncio.create_task(_load(b, f"b{i}", until, acked)) for i, b in enumerate(buyers)]
    await asyncio.sleep(1.0)
    killed_at = time.monotonic()
    os.kill(before[0], signal.SIGKILL)
    await asyncio.gather(*load)
    assert [t for t, _ in acked if killed_at < t < killed_at + 0.5], (
        "nobody answered after the kill"
    )
    deadline = time.monotonic() + 10
    while _gateway_pids(proc).get(0) == before[0] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    after = _gateway_pids(proc)
    assert after[0] != before[0] and after[1] == before[1]  # slot 0 replaced, slot 1 untouched
    # every acknowledged order is durable, and no retry placed one twice
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT client_order_id FROM market_orders WHERE instrument = $1", SYM
        )
    finally:
        await conn.close()
    placed = [r["client_order_id"] for r in rows]
    assert len(placed) == len(set(placed))
    assert {coid for _, coid in acked} <= set(placed)
    proc.wait_healthy(10)
    for client in buyers:
        await client.aclose()


async def test_the_embedded_bus_takes_only_clients_with_its_token(tmp_path: Path) -> None:
    """Whoever publishes on the bus can submit any command as any account: a client
    without the run's token (another process on this host) is refused at connect; the
    token is in no world-readable file."""
    import nats as nats_client
    from nats.errors import NoServersError

    embedded = EmbeddedNats(tmp_path)
    try:
        with pytest.raises((NoServersError, nats_client.errors.Error, OSError)):
            await nats_client.connect(embedded.url, allow_reconnect=False, connect_timeout=2,
                                      max_reconnect_attempts=0)  # fmt: skip
        with pytest.raises((NoServersError, nats_client.errors.Error, OSError)):
            await nats_client.connect(embedded.url, token="guess", allow_reconnect=False,
                                      connect_timeout=2, max_reconnect_attempts=0)  # fmt: skip
        client = await connect(embedded.url, name="test", token=embedded.token)
        await close(client)
        assert (tmp_path / "nats.conf").stat().st_mode & 0o077 == 0
    finally:
        embedded.stop()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


async def test_no_gateway_command_line_shows_the_bus_url_or_its_secret(workers: Workers) -> None:
    """`ps` shows every process's argv to every local user: a NATS URL of one's own carries
    a user and password, so the gateways get it in their environment."""
    assert workers.proc.proc is not None
    argvs = []
    for pid in _children(workers.proc.proc.pid):
        argv = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        if b"serve-gateway" in argv:
            argvs.append(argv)
    assert len(argvs) == 2
    for argv in argvs:
        assert not [arg for arg in argv if b"nats" in arg.lower()], argv
