"""Reading a raw ASGI scope, for the paths that build no Litestar request
(`market.orders_asgi`, `market.gateway.openai_asgi`, `ops.observe`)."""

from __future__ import annotations

from litestar.types import Scope


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of the header `name` (lower case, as ASGI gives names), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
