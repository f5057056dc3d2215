"""Request signing: the one definition of what a client signs and a server checks.

Every non-public request carries three headers:

    X-Tokex-Key:        the key id (`key_<16 hex>`, see `market.accounts`)
    X-Tokex-Timestamp:  Unix time in milliseconds
    X-Tokex-Signature:  base64 Ed25519 signature of `request_message(...)`:
                        "{timestamp}\\n{METHOD}\\n{path with query}\\n{hex SHA-256 of the body}"

The path with query is the request target exactly as sent (percent-encoding and parameter
order included); the body hash is over the exact bytes sent (empty body: SHA-256 of b"").

The websocket's signed subscribe (`/v1/stream`, channel `orders`) is signed as the request
`GET /v1/stream` whose body is `subscribe_body(...)`: the subscribe's own parameters, so a
captured subscribe cannot be sent again with other ones (`cancel_on_disconnect` turned on).

Used by the server (`market.auth` builds `request_message` and checks it with
`ledger.ed25519.verify`, in the helper process of `market.signatures`; `market.stream` for
the subscribe) and by the client (`market.client.TokexClient`). Pure: no litestar, no
asyncpg, so the client does not pull in the server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from typing import Any, Final

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import ed25519

__all__ = [
    "HEADER_KEY",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "STREAM_PATH",
    "decode_signature",
    "now_ms",
    "request_message",
    "sign_request",
    "sign_subscribe",
    "subscribe_body",
]

HEADER_KEY: Final = "X-Tokex-Key"
HEADER_TIMESTAMP: Final = "X-Tokex-Timestamp"
HEADER_SIGNATURE: Final = "X-Tokex-Signature"
#: The websocket's path: a signed subscribe is signed as `GET` of it.
STREAM_PATH: Final = "/v1/stream"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def request_message(timestamp_ms: int, method: str, path_with_query: str, body: bytes) -> bytes:
    """The exact bytes that are signed (the method is upper-cased)."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{timestamp_ms}\n{method.upper()}\n{path_with_query}\n{digest}".encode()


def sign_request(
    private_key: Ed25519PrivateKey,
    key_id: str,
    method: str,
    path_with_query: str,
    body: bytes,
    timestamp_ms: int,
) -> dict[str, str]:
    """The three authentication headers for one request."""
    signature = private_key.sign(request_message(timestamp_ms, method, path_with_query, body))
    return {
        HEADER_KEY: key_id,
        HEADER_TIMESTAMP: str(timestamp_ms),
        HEADER_SIGNATURE: base64.b64encode(signature).decode("ascii"),
    }


def decode_signature(header: str) -> bytes | None:
    """The 64 signature bytes of an `X-Tokex-Signature` value, or None if it is not
    (strict) base64 of 64 bytes."""
    try:
        raw = base64.b64decode(header, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == ed25519.SIGNATURE_BYTES else None


def subscribe_body(channel: str, instrument: str | None, cancel_on_disconnect: bool) -> bytes:
    """The body a signed subscribe signs (as `GET /v1/stream`): the subscribe message
    without its credentials, every parameter present, as compact JSON with sorted keys.

    `{"cancel_on_disconnect":false,"channel":"orders","instrument":null,"op":"subscribe"}`
    is the body of an orders subscribe of every instrument (the dashboard's `api.js` writes
    the same bytes with `JSON.stringify`); one of a single instrument names it. The server
    builds it from the subscribe it received, so a parameter changed after signing makes
    the signature fail.
    """
    params = {
        "cancel_on_disconnect": cancel_on_disconnect,
        "channel": channel,
        "instrument": instrument,
        "op": "subscribe",
    }
    return msgspec.json.encode(params, order="sorted")


def sign_subscribe(
    private_key: Ed25519PrivateKey,
    key_id: str,
    timestamp_ms: int,
    *,
    channel: str = "orders",
    instrument: str | None = None,
    cancel_on_disconnect: bool = False,
) -> dict[str, Any]:
    """A signed subscribe message for the websocket (a JSON object to send as text)."""
    body = subscribe_body(channel, instrument, cancel_on_disconnect)
    headers = sign_request(private_key, key_id, "GET", STREAM_PATH, body, timestamp_ms)
    return {
        "op": "subscribe",
        "channel": channel,
        "instrument": instrument,
        "cancel_on_disconnect": cancel_on_disconnect,
        "key_id": key_id,
        "timestamp_ms": timestamp_ms,
        "signature": headers[HEADER_SIGNATURE],
    }
