"""Strict decoding of what arrives on the wire: JSON bodies and integer query parameters.

Litestar converts a handler's arguments with msgspec in lax mode (`strict=False`: query
strings are text, so it must), and it converts the decoded JSON body the same way, so
`"quantity": "10"`, `10.0`, `1e3` and `"1e3"` all became integers. Money and token
quantities are JSON integers and nothing else, so (wired by `ops.app.create_app`):

* `StrictRequest`, the app's request class: a route's JSON body (`data`) is decoded by
  msgspec in strict mode straight into the route's type (a string, a float, a number in
  exponent form or a boolean is no integer; a string is no number), and answered 400
  `invalid_request` naming the field, e.g. "Expected `int`, got `str` - at `$.quantity`".
  Litestar's own lax conversion then passes the decoded value through unchanged.
* `strict_query_integers`, the app's `before_request`: an integer query parameter must be
  written in decimal digits (optionally after a minus sign), else 400 `invalid_request`
  naming it: `?limit=1e3` or `?limit=10.0` are refused instead of read as 1000 or 10.
  Limits (`ge`, `le`) stay the routes' own, checked by Litestar as before. Litestar runs
  the `before_request` of the layer closest to the handler only: a router or handler that
  sets its own must call this one too.
"""

from __future__ import annotations

import re
import types
import typing
import weakref
from typing import Any

import msgspec
from litestar import Request
from litestar.enums import RequestEncodingType
from litestar.handlers.base import BaseRouteHandler
from litestar.params import BodyKwarg, ParameterKwarg
from litestar.types import Empty

from schemas.errors import DomainError, ErrorKind

__all__ = ["InvalidRequest", "StrictRequest", "strict_query_integers"]

_DECIMAL = re.compile(r"-?[0-9]+")


class InvalidRequest(DomainError):
    """The request does not decode as the route's types (400)."""

    code = "invalid_request"
    kind = ErrorKind.INVALID


#: Per route handler: the strict decoder of its JSON body (None: it takes none), and the
#: names of its integer query parameters.
_BODY_DECODERS: weakref.WeakKeyDictionary[BaseRouteHandler, msgspec.json.Decoder[Any] | None]
_BODY_DECODERS = weakref.WeakKeyDictionary()
_INT_QUERIES: weakref.WeakKeyDictionary[BaseRouteHandler, tuple[str, ...]]
_INT_QUERIES = weakref.WeakKeyDictionary()


def _body_decoder(handler: BaseRouteHandler) -> msgspec.json.Decoder[Any] | None:
    if handler in _BODY_DECODERS:
        return _BODY_DECODERS[handler]
    field = handler.parsed_fn_signature.parameters.get("data")
    decoder: msgspec.json.Decoder[Any] | None = None
    kwarg = field.kwarg_definition if field is not None else None
    is_json = not isinstance(kwarg, BodyKwarg) or kwarg.media_type == RequestEncodingType.JSON
    if field is not None and is_json:
        decoder = msgspec.json.Decoder(field.annotation, strict=True)
    _BODY_DECODERS[handler] = decoder
    return decoder


class StrictRequest(Request[Any, Any, Any]):
    """A request whose `json()` is decoded strictly into the route's body type."""

    async def json(self) -> Any:
        if self._json is not Empty:
            return self._json
        decoder = _body_decoder(self.route_handler)
        if decoder is None:  # a route without a JSON body: Litestar's own decoding
            return await super().json()
        body = await self.body()
        try:
            value = decoder.decode(body or b"null")
        except msgspec.ValidationError as exc:
            raise InvalidRequest(str(exc)) from None
        except msgspec.DecodeError as exc:
            raise InvalidRequest(f"the body is not JSON: {exc}") from None
        self._json = self._connection_state.json = value
        return value


def _is_int(annotation: Any) -> bool:
    if annotation is int:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return int in args and all(a in (int, type(None)) for a in args)
    return False


def _int_queries(handler: BaseRouteHandler) -> tuple[str, ...]:
    names = _INT_QUERIES.get(handler)
    if names is None:
        found = []
        for name, field in handler.parsed_fn_signature.parameters.items():
            kwarg = field.kwarg_definition
            if isinstance(kwarg, ParameterKwarg) and (kwarg.header or kwarg.cookie):
                continue
            if _is_int(field.annotation):
                found.append(kwarg.query if isinstance(kwarg, ParameterKwarg) and kwarg.query
                             else name)  # fmt: skip
        names = _INT_QUERIES[handler] = tuple(found)
    return names


async def strict_query_integers(request: Request[Any, Any, Any]) -> None:
    """Refuse an integer query parameter that is not written in decimal digits."""
    names = _int_queries(request.route_handler)
    if not names:
        return
    query = request.query_params
    for name in names:
        for value in query.getall(name, ()):
            if not _DECIMAL.fullmatch(value):
                # Litestar's own words for `?limit=lots`, now also for 1e3 and 10.0
                raise InvalidRequest(f"Expected `int`, got `str` (query {name})")
