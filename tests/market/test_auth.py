"""Signed-request authentication: the signed string, the `Authenticator` on a real database,
and, against a real `tokex serve`, every way a request can be refused (unsigned, forged,
stale, replayed, unknown key, wrong role, malformed, oversized, rate-limited); never a 500."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from market.accounts import create_account, public_key_b64
from market.auth import (
    HEADER_KEY,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    WINDOW_MS,
    Authenticator,
    AuthError,
    KeyRecord,
    Principal,
    RateLimited,
    RateLimiter,
    ReplayWindow,
    now_ms,
    request_message,
    sign_request,
)
from market.client import TokexApiError, TokexClient
from schemas.accounts import AccountCreated, Role
from tests.support.server import ServerProcess

# --------------------------------------------------------------------------- pure


def test_request_message_golden() -> None:
    body = b'{"a":1}'
    expected = (
        b"1700000000123\nPOST\n/v1/orders?x=1&y=%20z\n"
        b"015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"
    )
    assert hashlib.sha256(body).hexdigest() == expected.decode().rsplit("\n", 1)[1]
    assert request_message(1700000000123, "post", "/v1/orders?x=1&y=%20z", body) == expected
    empty = request_message(1, "GET", "/health", b"")
    assert empty == (
        b"1\nGET\n/health\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_sign_request_round_trip() -> None:
    key = Ed25519PrivateKey.generate()
    headers = sign_request(key, "key_0123456789abcdef", "GET", "/v1/accounts/me", b"", 42)
    assert headers[HEADER_KEY] == "key_0123456789abcdef"
    assert headers[HEADER_TIMESTAMP] == "42"
    signature = base64.b64decode(headers[HEADER_SIGNATURE])
    key.public_key().verify(signature, request_message(42, "GET", "/v1/accounts/me", b""))
    with pytest.raises(InvalidSignature):
        key.public_key().verify(signature, request_message(43, "GET", "/v1/accounts/me", b""))


_KEY = Ed25519PrivateKey.generate()
_parts = st.tuples(
    st.integers(0, 2**53),
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40),
    st.binary(max_size=64),
)


@given(_parts, _parts)
def test_a_signature_covers_every_part(
    signed: tuple[int, str, str, bytes], sent: tuple[int, str, str, bytes]
) -> None:
    """A signature verifies for its own request, and for another only if all parts agree."""
    ts, method, path, body = signed
    headers = sign_request(_KEY, "key_0123456789abcdef", method, path, body, ts)
    signature = base64.b64decode(headers[HEADER_SIGNATURE])
    public = _KEY.public_key()
    public.verify(signature, request_message(ts, method, path, body))
    if sent != signed:
        with pytest.raises(InvalidSignature):
            public.verify(signature, request_message(*sent))


def test_replay_window_forgets_after_the_window() -> None:
    window = ReplayWindow(window_ms=1000, max_entries=2)
    assert window.check_and_add(b"a", timestamp_ms=0, now=0)
    assert not window.check_and_add(b"a", timestamp_ms=0, now=500)
    assert window.check_and_add(b"b", timestamp_ms=0, now=500)
    with pytest.raises(RateLimited):  # bounded: full of live signatures
        window.check_and_add(b"c", timestamp_ms=0, now=1000)
    assert window.check_and_add(b"c", timestamp_ms=1001, now=1001)  # a and b expired
    assert len(window) == 1


def test_rate_limiter_token_bucket() -> None:
    clock = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: clock[0])
    for _ in range(3):
        limiter.acquire("k")
    with pytest.raises(RateLimited) as info:
        limiter.acquire("k")
    assert info.value.retry_after == 1
    assert info.value.headers == {
        "Retry-After": "1", "X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "2",
    }  # fmt: skip
    limiter.acquire("other")  # per key
    clock[0] = 0.5  # one token back at 2/s
    limiter.acquire("k")
    with pytest.raises(RateLimited):
        limiter.acquire("k")
    slow = RateLimiter(rate=0.1, burst=1, clock=lambda: 0.0)
    slow.acquire("k")
    with pytest.raises(RateLimited) as info:
        slow.acquire("k")
    assert info.value.retry_after == 10


# --------------------------------------------------------------------------- Authenticator


async def test_authenticator_on_the_database(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        created, key = await create_account(conn, Role.PROVIDER, "p", None)
    assert key is not None
    now = now_ms()
    auth = Authenticator.from_pool(db_pool, started_ms=now - 10 * WINDOW_MS)  # up a while

    async def check(
        headers: dict[str, str], path: str = "/x", body: bytes = b"", at: int = now
    ) -> Principal:
        return await auth.authenticate(
            headers.get(HEADER_KEY),
            headers.get(HEADER_TIMESTAMP),
            headers.get(HEADER_SIGNATURE),
            "POST",
            path,
            body,
            at,
        )

    async def refused(code: str, headers: dict[str, str], **kw: object) -> None:
        with pytest.raises(AuthError) as info:
            await check(headers, **kw)  # type: ignore[arg-type]
        assert info.value.code == code, info.value

    good = sign_request(key, created.key_id, "POST", "/x", b"b", now)
    principal = await check(good, body=b"b")
    assert (principal.account_id, principal.role, principal.key_id) == (
        created.account_id,
        Role.PROVIDER,
        created.key_id,
    )
    await refused("replayed_signature", good, body=b"b")
    for missing in (HEADER_KEY, HEADER_TIMESTAMP, HEADER_SIGNATURE):
        fresh = sign_request(key, created.key_id, "POST", "/x", b"", now + 1)
        await refused("missing_signature", {k: v for k, v in fresh.items() if k != missing})
    late = sign_request(key, created.key_id, "POST", "/x", b"", now - WINDOW_MS - 1)
    await refused("stale_timestamp", late)
    await refused("stale_timestamp", {**good, HEADER_TIMESTAMP: "soon"})
    edge = sign_request(key, created.key_id, "POST", "/x", b"", now - WINDOW_MS)
    await check(edge)  # exactly 30 s off is still inside
    # A server that has just (re)started has no memory of what it saw before: it refuses
    # anything signed before it started, so a request captured then cannot be replayed.
    restarted = Authenticator.from_pool(db_pool, started_ms=now)
    before = sign_request(key, created.key_id, "POST", "/x", b"", now - 1)
    with pytest.raises(AuthError) as info:
        await restarted.authenticate(
            before[HEADER_KEY], before[HEADER_TIMESTAMP], before[HEADER_SIGNATURE],
            "POST", "/x", b"", now,
        )  # fmt: skip
    assert info.value.code == "stale_timestamp"
    await refused("bad_signature", sign_request(key, created.key_id, "POST", "/y", b"", now + 2))
    await refused("bad_signature", {**good, HEADER_SIGNATURE: "not base64!"})
    await refused("unknown_key", sign_request(key, "key_ffffffffffffffff", "POST", "/x", b"", now))
    await refused("unknown_key", sign_request(key, "'; drop table x", "POST", "/x", b"", now))
    # Revoked keys stop working once out of the cache.
    async with db_pool.acquire() as conn:
        await conn.execute(
            "UPDATE account_keys SET revoked_at = now() WHERE key_id = $1", created.key_id
        )
    auth.forget(created.key_id)
    await refused("unknown_key", sign_request(key, created.key_id, "POST", "/x", b"", now + 3))


@pytest.mark.parametrize("forget", ["forget", "forget_all"])
async def test_a_key_revoked_while_its_load_is_under_way_is_refused_next(forget: str) -> None:
    """A load that read the key's row before the revocation answers its own request, but
    is not cached: the next request loads the key again and is refused, rather than the
    revoked key working for `cache_ttl_s` more (found by a review)."""
    key = Ed25519PrivateKey.generate()
    kid = "key_0123456789abcdef"
    revoked = False
    gate = asyncio.Event()

    async def load(key_id: str) -> KeyRecord:
        snapshot = revoked  # the row as its SELECT saw it
        await gate.wait()  # the round trip to the database
        return KeyRecord(kid, "acc_1", Role.BUYER, key.public_key(), revoked=snapshot)

    auth = Authenticator(load, started_ms=0)

    async def call(ts: int) -> str:
        h = sign_request(key, kid, "GET", "/v1/balances", b"", ts)
        principal = await auth.authenticate(
            kid, h[HEADER_TIMESTAMP], h[HEADER_SIGNATURE], "GET", "/v1/balances", b"", ts
        )
        return principal.account_id

    now = now_ms()
    first = asyncio.create_task(call(now))  # a cache miss: its load is under way
    await asyncio.sleep(0.01)
    revoked = True  # the revocation commits ...
    if forget == "forget":  # ... and is seen: by the route, or by the listener
        auth.forget(kid)
    else:  # a listener that reconnected
        auth.forget_all()
    gate.set()
    assert await first == "acc_1"  # signed and sent before the revocation
    with pytest.raises(AuthError) as info:
        await call(now + 1)
    assert info.value.code == "unknown_key"
    assert await auth.key_active(kid) is False
    # An undisturbed load is cached as before: one load for many requests.
    loads = 0

    async def counted(key_id: str) -> KeyRecord:
        nonlocal loads
        loads += 1
        return KeyRecord(kid, "acc_1", Role.BUYER, key.public_key())

    auth = Authenticator(counted, started_ms=0)
    assert [await call(now + i) for i in range(3)] == ["acc_1"] * 3
    assert loads == 1


# --------------------------------------------------------------------------- real server


def assert_refused(exc: TokexApiError, status: int, code: str) -> None:
    assert (exc.status, exc.code) == (status, code), exc
    assert exc.message


@pytest.fixture
async def operator(db_url: str) -> tuple[AccountCreated, Ed25519PrivateKey]:
    conn = await asyncpg.connect(db_url)
    try:
        created, key = await create_account(conn, Role.OPERATOR, "root", None)
    finally:
        await conn.close()
    assert key is not None
    return created, key


@pytest.fixture
async def op(
    server: str, operator: tuple[AccountCreated, Ed25519PrivateKey]
) -> AsyncIterator[TokexClient]:
    created, key = operator
    async with TokexClient(server, created.key_id, key) as client:
        yield client


def copy(
    signed: httpx.Request, method: str | None = None, url: str | None = None, content: bytes = b""
) -> httpx.Request:
    """A new request carrying `signed`'s authentication headers (and nothing else of it)."""
    names = (HEADER_KEY, HEADER_TIMESTAMP, HEADER_SIGNATURE, "content-type")
    headers = {n: signed.headers[n] for n in names if n in signed.headers}
    return httpx.Request(
        method or signed.method, url or signed.url, headers=headers, content=content
    )


async def send(client: TokexClient, request: httpx.Request) -> TokexApiError:
    with pytest.raises(TokexApiError) as info:
        await client.send(request)
    assert info.value.status < 500
    return info.value


async def test_public_routes_need_no_signature(server: str) -> None:
    async with TokexClient(server) as anon:
        assert (await anon.health())["status"] == "ok"
        assert (await anon.request("GET", "/schema/openapi.json"))["info"]["title"] == "tokex"
        keys = await anon.request("GET", "/v1/ledger/public-keys")
        assert isinstance(keys, dict)
        with pytest.raises(TokexApiError) as info:
            await anon.request("GET", "/v1/accounts/me")
        assert_refused(info.value, 401, "missing_signature")
        with pytest.raises(TokexApiError) as info:
            await anon.request("POST", "/v1/accounts", json={"role": "buyer", "name": "x"})
        assert_refused(info.value, 401, "missing_signature")


async def test_signed_requests_and_their_forgeries(op: TokexClient, server: str) -> None:
    me = await op.me()
    assert me.role == Role.OPERATOR and me.key_ids == [op.key_id]

    # Signed by another key than the one named.
    other = op.with_key(op.key_id or "", Ed25519PrivateKey.generate())
    assert_refused(
        await send(op, other.build_request("GET", "/v1/accounts/me")), 401, "bad_signature"
    )

    # Altered body: signed for one body, sent with another.
    body = {
        "role": "buyer",
        "name": "b",
        "public_key": public_key_b64(Ed25519PrivateKey.generate()),
    }
    signed = op.build_request("POST", "/v1/accounts", json=body)
    altered = msgspec.json.encode({**body, "name": "mallory"})
    forged = copy(signed, content=altered)
    assert_refused(await send(op, forged), 401, "bad_signature")

    # The query is signed as sent (uvicorn's raw_path and query_string).
    params = {"instrument": "sp ace/ü&=?#", "limit": "7"}
    page = await op.request("GET", "/v1/orders", params=params)
    assert page["items"] == [] and page["next_cursor"] is None

    # Altered path, altered query, altered method.
    signed = op.build_request("GET", "/v1/accounts/me", params={"a": "1"})
    for url in (
        f"{server}/v1/accounts/me",
        f"{server}/v1/accounts/me?a=2",
        f"{server}/v1/accounts/me?a=1&b=2",
    ):
        forged = copy(signed, url=url)
        assert_refused(await send(op, forged), 401, "bad_signature")
    created = op.build_request("GET", "/v1/accounts/me")
    forged = copy(created, method="DELETE")
    error = await send(op, forged)
    assert error.status in (401, 405)

    # Stale either way, by a second more than the window.
    for skew in (-31_000, 31_000):
        stale = op.build_request("GET", "/v1/accounts/me", timestamp_ms=now_ms() + skew)
        assert_refused(await send(op, stale), 401, "stale_timestamp")

    # Exact replay.
    request = op.build_request("GET", "/v1/accounts/me")
    assert (await op.send(request))["account_id"] == me.account_id
    replay = copy(request)
    assert_refused(await send(op, replay), 401, "replayed_signature")

    # Unknown key.
    stranger = op.with_key("key_0000000000000000", Ed25519PrivateKey.generate())
    assert_refused(
        await send(op, stranger.build_request("GET", "/v1/accounts/me")), 401, "unknown_key"
    )

    # Unsigned with a partial set of headers.
    partial = op.build_request("GET", "/v1/accounts/me")
    del partial.headers[HEADER_SIGNATURE]
    assert_refused(await send(op, partial), 401, "missing_signature")


async def test_roles_and_ownership(op: TokexClient) -> None:
    buyer_created = await op.create_account(Role.BUYER, "acme")
    auditor_created = await op.create_account("auditor", "audit co")
    assert buyer_created.private_key is not None
    buyer, auditor = op.as_account(buyer_created), op.as_account(auditor_created)

    assert (await buyer.me()).account_id == buyer_created.account_id
    with pytest.raises(TokexApiError) as info:
        await buyer.create_account(Role.OPERATOR, "usurper")
    assert_refused(info.value, 403, "forbidden_role")
    with pytest.raises(TokexApiError) as info:
        await buyer.get_account(auditor_created.account_id)
    assert_refused(info.value, 403, "forbidden_role")
    with pytest.raises(TokexApiError) as info:
        await auditor.create_account(Role.BUYER, "x")
    assert_refused(info.value, 403, "forbidden_role")

    seen = await auditor.get_account(buyer_created.account_id)
    assert (seen.role, seen.name) == (Role.BUYER, "acme")
    assert (await op.get_account(auditor_created.account_id)).role == Role.AUDITOR
    with pytest.raises(TokexApiError) as info:
        await op.get_account("acc_0000000000000000")
    assert_refused(info.value, 404, "account_not_found")


async def test_malformed_and_oversized_bodies_are_4xx(op: TokexClient) -> None:
    key = public_key_b64(Ed25519PrivateKey.generate())

    async def post_raw(content: bytes) -> TokexApiError:
        request = op.build_request("POST", "/v1/accounts")
        request = httpx.Request("POST", request.url, content=content)
        request.headers["content-type"] = "application/json"
        assert op.private_key is not None and op.key_id is not None
        request.headers.update(
            sign_request(op.private_key, op.key_id, "POST", "/v1/accounts", content, now_ms())
        )
        return await send(op, request)

    assert_refused(await post_raw(b'{"role": "buyer", "name": '), 400, "invalid_request")
    assert_refused(await post_raw(b"\xff\xfe"), 400, "invalid_request")
    assert_refused(await post_raw(b"[1, 2]"), 400, "invalid_request")
    for body in (
        {"role": "buyer", "name": 7, "public_key": key},
        {"role": "king", "name": "x", "public_key": key},
        {"role": "buyer", "name": "", "public_key": key},
        {"role": "buyer", "name": "x", "public_key": key, "admin": True},
        {"name": "x", "public_key": key},
    ):
        error = await post_raw(msgspec.json.encode(body))
        assert_refused(error, 400, "invalid_request")
    with pytest.raises(TokexApiError) as info:
        await op.request("POST", "/v1/accounts", json={"role": "buyer", "name": "x"})
    assert_refused(info.value, 400, "public_key_required")
    bad_key = base64.b64encode(b"\x01" * 31 + b"\x02\x03").decode()[:44]
    with pytest.raises(TokexApiError) as info:
        await op.create_account(Role.BUYER, "x", public_key=bad_key)
    assert_refused(info.value, 400, "invalid_public_key")
    await op.create_account(Role.BUYER, "first", public_key=key)
    with pytest.raises(TokexApiError) as info:
        await op.create_account(Role.BUYER, "second", public_key=key)
    assert_refused(info.value, 409, "duplicate_public_key")

    # Over 64 KiB: 413, signed or not, announced length or chunked.
    big = msgspec.json.encode({"role": "buyer", "name": "x" * (64 * 1024), "public_key": key})
    assert_refused(await post_raw(big), 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 4096

    async with httpx.AsyncClient() as raw:
        response = await raw.post(op.base_url + "/v1/accounts", content=chunks())
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    # Just under the limit is read, then judged on its content.
    near = msgspec.json.encode({"role": "buyer", "name": "x" * 60_000, "public_key": key})
    assert_refused(await post_raw(near), 400, "invalid_request")


async def test_rate_limit_is_429_with_retry_after(
    db_url: str, tmp_path: Path, operator: tuple[AccountCreated, Ed25519PrivateKey]
) -> None:
    proc = ServerProcess(
        database_url=db_url,
        data_dir=tmp_path,
        env={"TOKEX_RATE_LIMIT": "0.2", "TOKEX_RATE_BURST": "3"},
    )
    with proc:
        created, key = operator
        async with TokexClient(proc.base_url, created.key_id, key) as client:
            for _ in range(3):
                await client.me()
            with pytest.raises(TokexApiError) as info:
                await client.me()
            assert_refused(info.value, 429, "rate_limited")
            assert info.value.retry_after == 5
            # Public routes are not limited; another key has its own bucket.
            for _ in range(5):
                await client.health()
            conn = await asyncpg.connect(db_url)
            try:
                second, second_key = await create_account(conn, Role.BUYER, "b", None)
            finally:
                await conn.close()
            assert second_key is not None
            assert (await client.with_key(second.key_id, second_key).me()).name == "b"


def test_an_unsigned_request_is_refused_from_its_headers_before_its_body(server: str) -> None:
    """An unsigned POST announcing 60,000 bytes of body and sending one held a connection
    in the app for the body deadline (30 s; 4,200 of them made every new client's /health
    503): when its headers alone refuse it, it is answered 401 at once, the lean order path
    (`market.orders_asgi`) and Litestar's routes alike."""
    host, port = server.removeprefix("http://").split(":")
    stale = f"{HEADER_KEY}: key_0123456789abcdef\r\n{HEADER_TIMESTAMP}: 1\r\n"
    stale += f"{HEADER_SIGNATURE}: x\r\n"
    for path in ("/v1/orders", "/v1/accounts"):
        for extra, code in (("", "missing_signature"), (stale, "stale_timestamp")):
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            head += f"Content-Length: 60000\r\n{extra}\r\n{{"
            with socket.create_connection((host, int(port)), timeout=5.0) as sock:
                sock.sendall(head.encode())
                answer = sock.recv(65536)  # before the body: not 30 s later
            assert answer.startswith(b"HTTP/1.1 401 "), (path, answer[:200])
            assert f'"code":"{code}"'.encode() in answer, (path, answer)
