"""Reading a raw ASGI scope, for the paths that build no Litestar request
(`market.orders_asgi`, `market.gateway.openai_asgi`, `ops.observe`)."""

from __future__ import annotations

from typing import Final

from litestar.exceptions import InternalServerException
from litestar.types import Scope

#: The status an answer to a client that hung up before its request was in is recorded
#: with (nginx's "client closed request"): it reaches nobody, and it is no server error.
CLIENT_CLOSED: Final = 499
#: What Litestar raises reading the body of a client that went away (`Request.stream`).
_DISCONNECTED: Final = "client disconnected prematurely"


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of the header `name` (lower case, as ASGI gives names), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def client_left(exc: BaseException) -> bool:
    """Whether `exc` is Litestar's for a client that hung up before its body was in (a
    500 `InternalServerException` of its own words): no fault of the server's."""
    return isinstance(exc, InternalServerException) and exc.detail == _DISCONNECTED
