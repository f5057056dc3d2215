"""Buyers' inference keys (table `gateway_inference_keys`, migration 0008).

A key is a bearer secret for `/openai/v1`: `tkx_` + 64 hex digits (256 bits from
`secrets`), shown once, in the answer that creates it. The exchange stores only its
SHA-256. No slow hash (bcrypt, scrypt, Argon2) is needed: those protect low-entropy
passwords against guessing; a 256-bit random secret cannot be guessed, so a leak of the
table reveals nothing a fast hash would not hide equally well, and a lookup by the hash
is one index probe per call instead of a deliberately slow computation.

A key belongs to one buyer; `models` (None: every model the buyer holds at call time)
scopes it; `token_budget` caps what the gateway meters through it in all; `expires_ms`
ends it. A call's key is looked up by its hash (one indexed read) and its grant kept
for `service.GRANTS_CACHE_S` (2 s) per process (`openai_api.authorize`): a revocation
clears that process's grants at once, other processes see it within that; a key's expiry
is checked on every call. Configuration, not ledger state: written directly, as accounts
are.

Written directly, a key is not seen by the sequencer process's replay window, and each
gateway process (`tokex serve --workers N`) has its own: the signed request that makes a
key is therefore stored with it (`request_signature`, UNIQUE, migration 0016), so that the
same signed request sent again to any gateway makes no second key (401
`replayed_signature`); the routes also claim every signature of theirs
(`market.stream_claims.claim_write`), a revocation's too. A buyer holds at most
`MAX_ACTIVE_KEYS` (100) live keys: the gateway's rate limit is per key. Without the
stored signature, whoever saw one signed creation (a proxy, a log of
bodies) would get a bearer secret of their own, spending the buyer's entitlements.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Final

import asyncpg

from market.auth import replayed_signature
from market.signing import now_ms as clock_ms
from schemas.errors import DomainError, ErrorKind
from schemas.gateway import CreateInferenceKey, InferenceKeyCreated, InferenceKeyView
from schemas.wire_time import unix_ms

SECRET_PREFIX = "tkx_"
_SIGNATURE_UNIQUE = "gateway_inference_keys_request_signature_key"  # migration 0016
_SECRET_RE = re.compile(r"tkx_[0-9a-f]{64}")


class InferenceKeyNotFound(DomainError):
    code = "inference_key_not_found"
    kind = ErrorKind.NOT_FOUND


class TooManyInferenceKeys(DomainError):
    """The buyer has `MAX_ACTIVE_KEYS` live (unrevoked, unexpired) inference keys already.
    (The gateway's rate limit is per key: without a cap, minting keys would multiply it
    without bound.)"""

    code = "too_many_keys"
    kind = ErrorKind.CONFLICT


#: Live inference keys a buyer may hold at once (`create_key`; 409 `too_many_keys`).
MAX_ACTIVE_KEYS: Final = 100


class InvalidInferenceKey(DomainError):
    """No bearer key, or not one of ours, or revoked, or expired (401)."""

    code = "invalid_api_key"
    kind = ErrorKind.UNAUTHORIZED


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """What a valid key lets its bearer do."""

    key_id: str
    buyer: str
    models: frozenset[str] | None  # None: every model the buyer holds
    token_budget: int | None
    expires_ms: int | None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def _view(record: asyncpg.Record) -> InferenceKeyView:
    return InferenceKeyView(
        key_id=record["key_id"],
        models=None if record["models"] is None else list(record["models"]),
        token_budget=record["token_budget"],
        expires_ms=record["expires_ms"],
        created_at_ms=unix_ms(record["created_at"]),
        revoked=record["revoked_at"] is not None,
    )


async def create_key(
    conn: asyncpg.Connection,
    buyer: str,
    req: CreateInferenceKey,
    *,
    signature: bytes | None,
    now_ms: int | None = None,
) -> InferenceKeyCreated:
    """Make a key; the returned secret is the only copy. `signature`: that of the signed
    request asking for it (None: no request to tell apart, no row to refuse by); a key
    already made by the same signature is `replayed_signature` (401), and no key.
    `TooManyInferenceKeys` (409 `too_many_keys`) if the buyer has `MAX_ACTIVE_KEYS` live
    keys at `now_ms` (default: now) already; the buyer's account row is locked meanwhile,
    so two creations at once cannot both pass."""
    key_id = "ik_" + secrets.token_hex(8)
    secret = SECRET_PREFIX + secrets.token_hex(32)
    models = None if req.models is None else sorted(set(req.models))
    now = clock_ms() if now_ms is None else now_ms
    try:
        async with conn.transaction():
            await conn.execute(
                "SELECT 1 FROM accounts WHERE account_id = $1 FOR NO KEY UPDATE", buyer
            )
            live = await conn.fetchval(
                """SELECT count(*) FROM gateway_inference_keys
                   WHERE buyer = $1 AND revoked_at IS NULL
                     AND (expires_ms IS NULL OR expires_ms > $2)""",
                buyer,
                now,
            )
            if live >= MAX_ACTIVE_KEYS:
                raise TooManyInferenceKeys(
                    f"you have {MAX_ACTIVE_KEYS} live inference keys, the most a buyer may hold; "
                    "revoke one first (DELETE /v1/inference-keys/{key_id})"
                )
            await conn.execute(
                """INSERT INTO gateway_inference_keys
                       (key_id, buyer, secret_sha256, models, token_budget, expires_ms,
                        request_signature)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                key_id, buyer, secret_hash(secret), models, req.token_budget, req.expires_ms,
                signature,
            )  # fmt: skip
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == _SIGNATURE_UNIQUE:
            raise replayed_signature() from None
        raise
    return InferenceKeyCreated(
        key_id=key_id, secret=secret, models=models, token_budget=req.token_budget,
        expires_ms=req.expires_ms,
    )  # fmt: skip


_SELECT = (
    "SELECT key_id, models, token_budget, expires_ms, created_at, revoked_at "
    "FROM gateway_inference_keys"
)


async def keys_of(conn: asyncpg.Connection, buyer: str) -> list[InferenceKeyView]:
    records = await conn.fetch(f"{_SELECT} WHERE buyer = $1 ORDER BY created_at, key_id", buyer)
    return [_view(r) for r in records]


async def revoke(conn: asyncpg.Connection, buyer: str, key_id: str) -> InferenceKeyView:
    """Revoke one of the buyer's keys (again: no change); 404 for a key not its own."""
    await conn.execute(
        """UPDATE gateway_inference_keys SET revoked_at = now()
           WHERE key_id = $1 AND buyer = $2 AND revoked_at IS NULL""",
        key_id,
        buyer,
    )
    record = await conn.fetchrow(f"{_SELECT} WHERE key_id = $1 AND buyer = $2", key_id, buyer)
    if record is None:
        raise InferenceKeyNotFound(f"no inference key {key_id[:40]!r} of yours")
    return _view(record)


def bearer_secret(authorization: str | None) -> str:
    """The secret of an `Authorization: Bearer tkx_...` header, or 401 `invalid_api_key`."""
    scheme, _, secret = (authorization or "").partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise InvalidInferenceKey("send your inference key as 'Authorization: Bearer tkx_...'")
    if not _SECRET_RE.fullmatch(secret):
        raise InvalidInferenceKey("this is not a tokex inference key (tkx_ and 64 hex digits)")
    return secret


async def authenticate(conn: asyncpg.Connection, secret: str, now_ms: int) -> KeyGrant:
    """The grant of a live key, or 401 `invalid_api_key` (unknown, revoked or expired)."""
    record = await conn.fetchrow(
        """SELECT key_id, buyer, models, token_budget, expires_ms, revoked_at IS NOT NULL AS revoked
           FROM gateway_inference_keys WHERE secret_sha256 = $1""",
        secret_hash(secret),
    )
    if record is None or record["revoked"]:
        raise InvalidInferenceKey("unknown or revoked inference key")
    expires = record["expires_ms"]
    if expires is not None and now_ms >= expires:
        raise InvalidInferenceKey("this inference key has expired")
    models = record["models"]
    return KeyGrant(
        key_id=record["key_id"], buyer=record["buyer"],
        models=None if models is None else frozenset(models),
        token_budget=record["token_budget"], expires_ms=expires,
    )  # fmt: skip
