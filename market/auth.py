"""Signed-request authentication, role guards and per-key rate limits.

Every non-public request carries three headers, `X-Tokex-Key`, `X-Tokex-Timestamp` and
`X-Tokex-Signature`, signing `request_message(...)`:
"{timestamp}\\n{METHOD}\\n{path with query}\\n{hex SHA-256 of the body}" (defined, with the
header names and the client's `sign_request`, in `market.signing`, which both this module
and `market.client` use; re-exported here). Signatures are checked strictly
(`ledger.ed25519.verify`: no small-order key or R, no S >= L, no non-canonical encodings).

`Authenticator.authenticate` is the check, independent of Litestar (the websocket stream
reuses it for its signed subscribe message). It refuses, as `AuthError` (401), in this order:
`missing_signature` (a header absent), `stale_timestamp` (not an integer, or more than 30 s
from the server's clock either way), `unknown_key` (no such key, a malformed key id, or
revoked), `bad_signature` (not base64 of 64 bytes, or does not verify: other key, altered
method, path, query or body, or a signature the strict check refuses), `replayed_signature`
(the same signature already accepted within the window). Replay detection holds accepted
signatures in memory until their timestamp leaves the window: it is per process. With more
than one gateway process (`tokex serve --workers N`, or hosts behind a balancer) a signed
request replayed to another gateway passes this window, so every write a gateway takes is
checked once more where all gateways meet: a command in the sequencer process's own window
(`market.sequencer.responder`); a write the route makes in the database itself (accounts,
signing keys, endpoints, inference keys) by claiming its signature in the database in the
write's transaction (`market.stream_claims.claim_write`, the table of migration 0017), as a
private websocket subscribe does (`stream_claims.claim`). Such writes are not safe to take
twice even when each alone looks idempotent: a captured endpoint delete replayed after the
provider registered the endpoint again would remove the new one. All refuse with
`replayed_signature()`, as here.

Litestar integration (wired by `ops.app.create_app`):

* `AuthMiddleware` authenticates every HTTP route except public ones, then applies the
  per-key token-bucket rate limit (429 `rate_limited` with `Retry-After`). A route is public
  if its handler (or its router/controller) has `opt=PUBLIC` (i.e. `{"public": True}`), or
  its path is under one of `PUBLIC_PATH_PREFIXES` (/health, /schema, /v1/ledger).
* Handlers declare `principal: Principal` to get the caller (dependency provided by
  `provide_principal`; on a public route it is 401 `missing_signature`).
* `guards=[requires_role(Role.OPERATOR, ...)]` refuses other roles with 403 `forbidden_role`.

Ownership is the route's business: look rows up by id *and* `principal.account_id`, and
answer 404 (not 403) for another account's ids, so ids of others are not even confirmed.
"""

from __future__ import annotations

import heapq
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from market.request_context import SIGNED
from market.signatures import SignatureChecker
from market.signing import (
    HEADER_KEY,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    decode_signature,
    now_ms,
    request_message,
    sign_request,
)
from schemas.accounts import Role
from schemas.errors import DomainError, ErrorKind

__all__ = [
    "HEADER_KEY",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "PUBLIC",
    "PUBLIC_PATH_PREFIXES",
    "WINDOW_MS",
    "AuthError",
    "AuthMiddleware",
    "Authenticator",
    "ForbiddenRole",
    "KeyRecord",
    "Principal",
    "Quota",
    "RateLimited",
    "RateLimiter",
    "ReplayWindow",
    "authenticate_scope",
    "now_ms",
    "principal_of",
    "provide_principal",
    "replayed_signature",
    "request_message",
    "requires_role",
    "sign_request",
]

#: A timestamp more than this far from the server's clock (either way) is refused.
WINDOW_MS: Final = 30_000

#: `opt` marking a route handler, controller or router as public (no signature needed).
PUBLIC_OPT_KEY: Final = "public"
PUBLIC: Final[dict[str, Any]] = {PUBLIC_OPT_KEY: True}
#: Paths that are public whatever their handlers say: health, OpenAPI, the public ledger audit.
PUBLIC_PATH_PREFIXES: Final = ("/health", "/schema", "/v1/ledger")

_KEY_ID_RE = re.compile(r"key_[0-9a-f]{16}")
_TIMESTAMP_RE = re.compile(r"[0-9]{1,16}")
_PRINCIPAL_STATE_KEY = "tokex.principal"


# --------------------------------------------------------------------------- errors


class AuthError(DomainError):
    """The request is not (validly) signed. Codes: `missing_signature`, `unknown_key`,
    `bad_signature`, `stale_timestamp`, `replayed_signature`."""

    code = "unauthorized"
    kind = ErrorKind.UNAUTHORIZED


class ForbiddenRole(DomainError):
    """Authenticated, but the account's role may not use this route."""

    code = "forbidden_role"
    kind = ErrorKind.FORBIDDEN


class RateLimited(DomainError):
    """Too many requests for this key; `retry_after` whole seconds until one more is allowed."""

    code = "rate_limited"
    kind = ErrorKind.RATE_LIMITED

    def __init__(self, message: str, *, retry_after: int, quota: Quota | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.quota = quota

    @property
    def headers(self) -> dict[str, str]:
        """Response headers (`ops.errors` adds a DomainError's `headers` to its response)."""
        headers = {"Retry-After": str(self.retry_after)}
        if self.quota is not None:
            headers.update(self.quota.headers())
        return headers


@dataclass(frozen=True, slots=True)
class Quota:
    """A key's rate-limit bucket after a request: what the `X-RateLimit-*` headers say.

    `limit` is the burst (the bucket's size), `remaining` the whole requests left in it
    now, `reset_s` the whole seconds until it is full again.
    """

    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_s),
        }

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        return [(k.lower().encode(), v.encode()) for k, v in self.headers().items()]


def replayed_signature() -> AuthError:
    """The refusal of a signature already taken: by a replay window (this process's or
    the sequencer process's) or by the row a write recorded it with."""
    return AuthError("this signature was already used", code="replayed_signature")


# --------------------------------------------------------------------------- principal


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request.

    `signature`: the raw signature of the request it was authenticated by (b"" if built
    otherwise), for a write that records it so that the same signed request cannot be
    taken twice across processes (`market.gateway.keys.create_key`)."""

    account_id: str
    role: Role
    key_id: str
    signature: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True)
class KeyRecord:
    """A request-signing key as the authenticator needs it."""

    key_id: str
    account_id: str
    role: Role
    public_key: bytes | Ed25519PublicKey  # raw 32 bytes (from the database), or a key object
    revoked: bool = False


KeyLoader = Callable[[str], Awaitable[KeyRecord | None]]


def pool_key_loader(pool: asyncpg.Pool) -> KeyLoader:
    """Load keys from the `account_keys` and `accounts` tables (migration 0003)."""

    async def load(key_id: str) -> KeyRecord | None:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                """SELECT k.account_id, a.role, k.public_key, k.revoked_at IS NOT NULL AS revoked
                   FROM account_keys k JOIN accounts a USING (account_id)
                   WHERE k.key_id = $1""",
                key_id,
            )
        if row is None:
            return None
        return KeyRecord(
            key_id=key_id,
            account_id=row["account_id"],
            role=Role(row["role"]),
            public_key=bytes(row["public_key"]),
            revoked=row["revoked"],
        )

    return load


class ReplayWindow:
    """Signatures accepted within the window, each kept until its timestamp is stale.

    Bounded: at most `max_entries` live signatures (the per-key rate limit keeps honest
    traffic far below it); beyond that, new requests are refused (429) rather than
    accepting a possible replay.
    """

    def __init__(self, window_ms: int = WINDOW_MS, max_entries: int = 1_000_000) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._seen: set[bytes] = set()
        self._expiry: list[tuple[int, bytes]] = []  # heap of (timestamp + window, signature)

    def __len__(self) -> int:
        return len(self._seen)

    def _prune(self, now: int) -> None:
        heap = self._expiry
        while heap and heap[0][0] < now:
            _, signature = heapq.heappop(heap)
            self._seen.discard(signature)

    def check_and_add(self, signature: bytes, timestamp_ms: int, now: int) -> bool:
        """False if `signature` was seen (a replay); else remember it and return True."""
        self._prune(now)
        if signature in self._seen:
            return False
        if len(self._seen) >= self.max_entries:
            raise RateLimited("too many requests in flight; retry shortly", retry_after=1)
        self._seen.add(signature)
        heapq.heappush(self._expiry, (timestamp_ms + self.window_ms, signature))
        return True


class Authenticator:
    """Checks signed requests against the accounts' keys (cached) and a replay window.

    Keys are cached for `cache_ttl_s` seconds, so a revoked key stops working within that
    time (or at once after `forget(key_id)`). A load under way when the key is forgotten
    (`forget`, `forget_all`) answers its own request but is not cached: it may have read the
    row before the revocation, and caching it would bring the key back for `cache_ttl_s`.
    Unknown key ids are not cached. The key routes (`market.accounts_api`) call `forget` in
    the process that revokes; every process's `market.key_revocations.RevocationListener`
    calls it on the database's
    notification, so the other processes of `serve --workers N` refuse the key at once too
    (within the TTL while that listener is cut off from the database).

    The replay window lives in this process's memory, so a request signed before the
    process started is refused (`stale_timestamp`): otherwise a request captured just
    before a restart could be replayed just after it. A client re-signs with a new
    timestamp and goes through.
    """

    def __init__(
        self,
        load_key: KeyLoader,
        *,
        window_ms: int = WINDOW_MS,
        cache_ttl_s: float = 30.0,
        cache_size: int = 100_000,
        replay: ReplayWindow | None = None,
        started_ms: int | None = None,
        checker: SignatureChecker | None = None,
    ) -> None:
        self._load_key = load_key
        #: Where signatures are checked: in this process until `checker.start()` (the app's
        #: lifespan starts it), then in a helper process (`market.signatures`).
        self.checker = checker or SignatureChecker()
        self.started_ms = now_ms() if started_ms is None else started_ms
        self.window_ms = window_ms
        self.cache_ttl_s = cache_ttl_s
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[float, KeyRecord]] = OrderedDict()
        #: Per key with loads under way: [loads under way, generation]; `forget` bumps the
        #: generation, `forget_all` the epoch. A load is cached only if both are unchanged.
        self._loads: dict[str, list[int]] = {}
        self._epoch = 0
        self.replay = replay or ReplayWindow(window_ms)

    @classmethod
    def from_pool(cls, pool: asyncpg.Pool, **options: Any) -> Authenticator:
        return cls(pool_key_loader(pool), **options)

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (after revoking it), and from loads under way."""
        self._cache.pop(key_id, None)
        loads = self._loads.get(key_id)
        if loads is not None:
            loads[1] += 1

    def forget_all(self) -> None:
        """Drop every cached key (a revocation may have been missed), and loads under way."""
        self._cache.clear()
        self._epoch += 1

    async def key_active(self, key_id: str) -> bool:
        """Whether `key_id` still exists unrevoked (as cached: true up to `cache_ttl_s` after
        a revocation this process was not told of). For a long-lived session authenticated
        once, such as a websocket `orders` subscription."""
        record = await self._key(key_id)
        return record is not None and not record.revoked

    async def _key(self, key_id: str) -> KeyRecord | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[0] < self.cache_ttl_s:
            return cached[1]
        loads = self._loads.setdefault(key_id, [0, 0])
        loads[0] += 1
        generation, epoch = loads[1], self._epoch
        try:
            record = await self._load_key(key_id)
        finally:
            loads[0] -= 1
            if loads[0] == 0:
                del self._loads[key_id]
        if record is None:
            self._cache.pop(key_id, None)
            return None
        if loads[1] != generation or self._epoch != epoch:
            return record  # forgotten meanwhile: this request's, not the cache's
        self._cache[key_id] = (now, record)
        self._cache.move_to_end(key_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return record

    def check_headers(
        self, key_id: str | None, timestamp: str | None, signature: str | None, now_ms: int
    ) -> tuple[str, int, str]:
        """What the signature headers alone decide (`authenticate`'s first checks): raises
        `AuthError` (`missing_signature`, `stale_timestamp`, a malformed key id's
        `unknown_key`), else the key id, the timestamp and the signature. Needs neither the
        body nor the database, so a request can be refused before its body is read."""
        missing = [
            name
            for name, value in (
                (HEADER_KEY, key_id),
                (HEADER_TIMESTAMP, timestamp),
                (HEADER_SIGNATURE, signature),
            )
            if not value
        ]
        if missing or key_id is None or timestamp is None or signature is None:
            raise AuthError(
                f"request is not signed: missing {', '.join(missing)}", code="missing_signature"
            )
        if not _TIMESTAMP_RE.fullmatch(timestamp):
            raise AuthError(
                f"{HEADER_TIMESTAMP} must be Unix time in milliseconds", code="stale_timestamp"
            )
        ts = int(timestamp)
        if ts < self.started_ms:
            raise AuthError(
                f"{HEADER_TIMESTAMP} is from before this server started; sign the request again",
                code="stale_timestamp",
            )
        if abs(now_ms - ts) > self.window_ms:
            raise AuthError(
                f"{HEADER_TIMESTAMP} is {(now_ms - ts) / 1000:+.1f} s from the server's clock "
                f"(at most {self.window_ms / 1000:g} s allowed)",
                code="stale_timestamp",
            )
        if not _KEY_ID_RE.fullmatch(key_id):
            raise AuthError(
                f"{HEADER_KEY} {key_id[:40]!r} is not a key id (key_ and 16 hex digits)",
                code="unknown_key",
            )
        return key_id, ts, signature

    async def authenticate(
        self,
        key_id: str | None,
        timestamp: str | None,
        signature: str | None,
        method: str,
        path_with_query: str,
        body: bytes,
        now_ms: int,
    ) -> Principal:
        """The principal of a validly signed request, or `AuthError` saying why not."""
        key_id, ts, signature = self.check_headers(key_id, timestamp, signature, now_ms)
        record = await self._key(key_id)
        if record is None or record.revoked:
            raise AuthError(f"unknown or revoked key {key_id[:40]!r}", code="unknown_key")
        raw_signature = decode_signature(signature)
        if raw_signature is None:
            raise AuthError(
                f"{HEADER_SIGNATURE} is not a base64 Ed25519 signature", code="bad_signature"
            )
        message = request_message(ts, method, path_with_query, body)
        if not await self.checker.verify(record.public_key, raw_signature, message):
            raise AuthError(
                "signature does not match the request (method, path with query, body, "
                "timestamp) under this key",
                code="bad_signature",
            )
        # Ed25519 is deterministic and the strict check refuses non-canonical S and R, so
        # the signature bytes identify (key, message): the same bytes again are a replay.
        if not self.replay.check_and_add(raw_signature, ts, now_ms):
            raise replayed_signature()
        return Principal(
            account_id=record.account_id, role=record.role, key_id=key_id, signature=raw_signature
        )


# --------------------------------------------------------------------------- rate limit


class RateLimiter:
    """A token bucket per key: `rate` requests per second on average, bursts of `burst`.

    In memory, per process; at most `max_keys` buckets (least recently used dropped: a
    dropped bucket comes back full, which only ever errs on the generous side for a key
    idle long enough to be the least recent of that many).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def acquire(self, key: str) -> Quota:
        """Take one token for `key` and say what is left, or raise `RateLimited` with
        the seconds to wait."""
        now = self._clock()
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            retry_after = max(1, math.ceil((1.0 - tokens) / self.rate))
            raise RateLimited(
                f"rate limit of {self.rate:g}/s (burst {self.burst}) exceeded for this key",
                retry_after=retry_after,
                quota=self._quota(tokens),
            )
        tokens -= 1.0
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return self._quota(tokens)

    def _quota(self, tokens: float) -> Quota:
        reset_s = math.ceil((self.burst - tokens) / self.rate)
        return Quota(limit=self.burst, remaining=int(tokens), reset_s=reset_s)


# --------------------------------------------------------------------------- Litestar


def _path_with_query(scope: Scope) -> str:
    """The request target as the client sent it: raw path, then `?query` if any."""
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
    # Per ASGI, raw_path has no query; some servers (Litestar's test transport) include it.
    target = raw_path.split(b"?", 1)[0].decode("latin-1")
    query = scope.get("query_string", b"")
    return f"{target}?{query.decode('latin-1')}" if query else target


def _is_public_path(scope: Scope) -> bool:
    # The request path is the one the router matched, so a prefix names the router.
    path = scope["path"]
    return any(path == prefix or path.startswith(prefix + "/") for prefix in PUBLIC_PATH_PREFIXES)


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal | None:
    """The principal `AuthMiddleware` stored for this request (None on public routes)."""
    state = connection.scope.get("state") or {}
    principal = state.get(_PRINCIPAL_STATE_KEY)
    return principal if isinstance(principal, Principal) else None


class AuthMiddleware(ASGIMiddleware):
    """Authenticate non-public HTTP requests, then rate-limit them per key.

    The authenticator is taken from `app.state.authenticator` (set at start-up, once the
    pool is open). The body is read here, within the route's size limit (413 beyond it),
    and cached by Litestar for the handler; a request the signature headers alone refuse
    (`Authenticator.check_headers`) is refused before it, if it announces a body within
    the limit.
    """

    scopes = (ScopeType.HTTP,)
    exclude_opt_key = PUBLIC_OPT_KEY

    def __init__(
        self,
        limiter: RateLimiter | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.limiter = limiter
        self.clock = clock
        self.should_bypass_for_scope = _is_public_path

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        request: Request[Any, Any, Any] = Request(scope, receive)
        authenticator: Authenticator = request.app.state.authenticator
        headers = request.headers
        if _announced_within_limit(request):  # refused from its headers before its body
            authenticator.check_headers(
                headers.get(HEADER_KEY),
                headers.get(HEADER_TIMESTAMP),
                headers.get(HEADER_SIGNATURE),
                self.clock(),
            )
        body = await request.body()
        principal = await authenticator.authenticate(
            headers.get(HEADER_KEY),
            headers.get(HEADER_TIMESTAMP),
            headers.get(HEADER_SIGNATURE),
            request.method,
            _path_with_query(scope),
            body,
            self.clock(),
        )
        state = scope.get("state")
        if state is None:
            state = {}
            scope["state"] = state
        state[_PRINCIPAL_STATE_KEY] = principal
        SIGNED.set(f"{headers.get(HEADER_SIGNATURE)} {headers.get(HEADER_TIMESTAMP)}")
        if self.limiter is None:
            await next_app(scope, receive, send)
            return
        extra = self.limiter.acquire(principal.key_id).raw_headers()

        async def send_with_quota(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await next_app(scope, receive, send_with_quota)


def _announced_within_limit(request: Request[Any, Any, Any]) -> bool:
    """Whether the request announces a body (Content-Length) within the route's limit: then
    its signature headers are checked before the body is read, so that an unsigned request
    announcing 60,000 bytes and sending one is not held for the body deadline. A body past
    the limit, or chunked, is read first as before: its 413 comes first, signed or not."""
    length = request.content_length
    limit = request.route_handler.resolve_request_max_body_size()
    return length is not None and (limit is None or length <= limit)


_RAW_KEY: Final = HEADER_KEY.lower().encode()
_RAW_TIMESTAMP: Final = HEADER_TIMESTAMP.lower().encode()
_RAW_SIGNATURE: Final = HEADER_SIGNATURE.lower().encode()


def signature_headers(scope: Scope) -> tuple[str | None, str | None, str | None]:
    """The key id, timestamp and signature headers of a raw ASGI scope (the first of each)."""
    key_id = timestamp = signature = None
    for name, value in scope["headers"]:
        if name == _RAW_KEY:
            key_id = key_id if key_id is not None else value.decode("latin-1")
        elif name == _RAW_TIMESTAMP:
            timestamp = timestamp if timestamp is not None else value.decode("latin-1")
        elif name == _RAW_SIGNATURE:
            signature = signature if signature is not None else value.decode("latin-1")
    return key_id, timestamp, signature


async def authenticate_scope(
    authenticator: Authenticator, scope: Scope, body: bytes, now_ms: int
) -> Principal:
    """`AuthMiddleware`'s check (and its `SIGNED` context) from the raw ASGI scope, for a
    path that builds no Litestar request (`market.orders_asgi`). The first of a repeated
    header counts, as with Litestar's headers."""
    key_id, timestamp, signature = signature_headers(scope)
    principal = await authenticator.authenticate(
        key_id,
        timestamp,
        signature,
        str(scope.get("method")),
        _path_with_query(scope),
        body,
        now_ms,
    )
    SIGNED.set(f"{signature} {timestamp}")
    return principal


def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """Dependency `principal`: the authenticated caller."""
    principal = principal_of(request)
    if principal is None:
        raise AuthError("this route needs a signed request", code="missing_signature")
    return principal


def requires_role(
    *roles: Role,
) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]:
    """A guard admitting only accounts of one of `roles` (403 `forbidden_role`).

    Async on purpose: Litestar runs a synchronous guard in a worker thread, a thread
    hop (and GIL contention) on every request for what is a set lookup.
    """
    allowed = frozenset(roles)
    names = ", ".join(sorted(allowed))

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = principal_of(connection)
        if principal is None:
            raise AuthError("this route needs a signed request", code="missing_signature")
        if principal.role not in allowed:
            raise ForbiddenRole(f"role {principal.role} may not do this (needs: {names})")

    return guard
