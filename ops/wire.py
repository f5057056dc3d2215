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
* `strict_query`, the app's `before_request`: a query parameter the route does not take
  is refused 400 `unknown_query_parameter` naming it as the client sent it (Litestar
  ignores them, so `?client_order_id=x` on a list route silently listed everything); an
  integer query parameter must be written in decimal digits (optionally after a minus
  sign), else 400 `invalid_request` naming it: `?limit=1e3` or `?limit=10.0` are refused
  instead of read as 1000 or 10. Limits (`ge`, `le`) stay the routes' own, checked by
  Litestar as before. Litestar runs the `before_request` of the layer closest to the
  handler only: a router or handler that sets its own must call this one too.
* `query_alias`: the name a client sends for a route's parameter (`format` for the
  report routes' `fmt`), so error messages say what the client wrote.
"""

from __future__ import annotations

import collections.abc
import re
import types
import typing
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from litestar import Request
from litestar.enums import RequestEncodingType
from litestar.handlers.base import BaseRouteHandler
from litestar.params import BodyKwarg, ParameterKwarg
from litestar.types import Empty

from schemas.errors import DomainError, ErrorKind

__all__ = [
    "InvalidRequest",
    "StrictRequest",
    "UnknownQueryParameter",
    "query_alias",
    "strict_query",
]

_DECIMAL = re.compile(r"-?[0-9]+")
#: An integer path parameter as a client must write it (Litestar's `:int` takes what
#: `int()` takes: `0_3`, `+3`, other scripts' digits).
_PATH_INT = re.compile(r"[0-9]{1,19}")
_T = TypeVar("_T")


class InvalidRequest(DomainError):
    """The request does not decode as the route's types (400)."""

    code = "invalid_request"
    kind = ErrorKind.INVALID


class UnknownQueryParameter(DomainError):
    """A query parameter the route does not take (400)."""

    code = "unknown_query_parameter"
    kind = ErrorKind.INVALID


#: Per route handler: the strict decoder of its JSON body (None: it takes none), and the
#: names of its integer query parameters.
_BODY_DECODERS: weakref.WeakKeyDictionary[BaseRouteHandler, msgspec.json.Decoder[Any] | None]
_BODY_DECODERS = weakref.WeakKeyDictionary()
_INT_QUERIES: weakref.WeakKeyDictionary[BaseRouteHandler, tuple[str, ...]]
_INT_QUERIES = weakref.WeakKeyDictionary()
_LIST_QUERIES: weakref.WeakKeyDictionary[BaseRouteHandler, frozenset[str]]
_LIST_QUERIES = weakref.WeakKeyDictionary()
#: Per route handler: its query parameters, field name -> the name a client sends.
_QUERY_ALIASES: weakref.WeakKeyDictionary[BaseRouteHandler, dict[str, str]]
_QUERY_ALIASES = weakref.WeakKeyDictionary()


def _cached(
    cache: weakref.WeakKeyDictionary[BaseRouteHandler, _T],
    handler: BaseRouteHandler,
    make: Callable[[BaseRouteHandler], _T],
) -> _T:
    """`make(handler)`, once per handler. Litestar's own OPTIONS handlers cannot be weakly
    referenced (a `TypeError` from the cache): theirs is made each time, never a 500."""
    try:
        return cache[handler]
    except KeyError:
        pass
    except TypeError:
        return make(handler)
    value = cache[handler] = make(handler)
    return value


def _body_decoder(handler: BaseRouteHandler) -> msgspec.json.Decoder[Any] | None:
    return _cached(_BODY_DECODERS, handler, _make_body_decoder)


def _make_body_decoder(handler: BaseRouteHandler) -> msgspec.json.Decoder[Any] | None:
    field = handler.parsed_fn_signature.parameters.get("data")
    kwarg = field.kwarg_definition if field is not None else None
    is_json = not isinstance(kwarg, BodyKwarg) or kwarg.media_type == RequestEncodingType.JSON
    if field is not None and is_json:
        return msgspec.json.Decoder(field.annotation, strict=True)
    return None


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
        if b"\\u0000" in body and _holds_nul(msgspec.json.decode(body)):
            # PostgreSQL's text cannot hold it: refused here, not by the database in
            # the middle of a batch (with the other requests in it).
            raise InvalidRequest("a string of the body holds a NUL character (\\u0000)")
        self._json = self._connection_state.json = value
        return value


def _holds_nul(value: Any) -> bool:
    """Whether any string in the decoded JSON `value` (keys included) holds a NUL."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    if isinstance(value, dict):
        return any("\x00" in k or _holds_nul(v) for k, v in value.items())
    return False


def _is_int(annotation: Any) -> bool:
    if annotation is int:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return int in args and all(a in (int, type(None)) for a in args)
    return False


def _list_queries(handler: BaseRouteHandler) -> frozenset[str]:
    """The names of the handler's query parameters that take several values (a list)."""
    return _cached(_LIST_QUERIES, handler, lambda h: frozenset(_queries_where(h, _is_list)))


def _is_list(annotation: Any) -> bool:
    origins = {typing.get_origin(annotation)}
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        origins = {typing.get_origin(a) for a in typing.get_args(annotation)}
    return bool(origins & {list, tuple, set, frozenset, collections.abc.Sequence})


def _int_queries(handler: BaseRouteHandler) -> tuple[str, ...]:
    return _cached(_INT_QUERIES, handler, lambda h: tuple(_queries_where(h, _is_int)))


def _queries_where(handler: BaseRouteHandler, test: Callable[[Any], bool]) -> list[str]:
    """The names a client sends for the handler's query parameters whose annotation
    passes `test` (headers and cookies left out)."""
    found = []
    for name, field in handler.parsed_fn_signature.parameters.items():
        kwarg = field.kwarg_definition
        if isinstance(kwarg, ParameterKwarg) and (kwarg.header or kwarg.cookie):
            continue
        if test(field.annotation):
            found.append(kwarg.query if isinstance(kwarg, ParameterKwarg) and kwarg.query
                         else name)  # fmt: skip
    return found


def _query_aliases(handler: BaseRouteHandler, path_params: Any) -> dict[str, str]:
    """The handler's query parameters (its own and its dependencies'), from the same
    kwargs model Litestar builds for it."""

    def make(handler: BaseRouteHandler) -> dict[str, str]:
        # Only the path parameters' names are read (to tell them from query ones).
        names: dict[str, Any] = dict.fromkeys(path_params)
        model = handler.create_kwargs_model(path_parameters=names)
        return {p.field_name: p.field_alias for p in model.expected_query_params}

    return _cached(_QUERY_ALIASES, handler, make)


def _check_int_segments(template: str, path: str, params: dict[str, Any]) -> None:
    """Refuse an integer path parameter not written in decimal digits (`/orders/0_3` is
    not order 3)."""
    names, parts = template.split("/"), path.split("/")
    if len(names) != len(parts):
        return  # a mounted or `:path` route: not ours to split
    for name, part in zip(names, parts, strict=True):
        if not (name.startswith("{") and name.endswith("}")):
            continue
        field = name[1:-1].split(":", 1)[0]
        if type(params.get(field)) is int and not (_PATH_INT.fullmatch(part) and int(part) < 2**63):
            raise InvalidRequest(
                f"path parameter {field} must be decimal digits below 2**63, not {part!r}"
            )


def query_alias(request: Request[Any, Any, Any], name: str) -> str:
    """The name the client sends for the route's query parameter `name`."""
    return _query_aliases(request.route_handler, request.path_params).get(name, name)


async def strict_query(request: Request[Any, Any, Any]) -> None:
    """Refuse a query parameter the route does not take, and an integer one that is not
    written in decimal digits."""
    template = request.scope.get("path_template")
    params = request.path_params
    if template is not None and any(type(v) is int for v in params.values()):
        _check_int_segments(template, request.scope["path"], params)
    query = request.query_params
    if not query:
        return
    allowed = _query_aliases(request.route_handler, request.path_params).values()
    for sent in query:
        if sent not in allowed:
            takes = ", ".join(sorted(allowed)) or "none"
            raise UnknownQueryParameter(
                f"unknown query parameter {sent!r} (this route takes: {takes})"
            )
        if len(query.getall(sent)) > 1 and sent not in _list_queries(request.route_handler):
            # which one would the client have meant?
            raise InvalidRequest(f"query parameter {sent!r} given more than once")
    for name in _int_queries(request.route_handler):
        for value in query.getall(name, ()):
            if not _DECIMAL.fullmatch(value):
                # Litestar's own words for `?limit=lots`, now also for 1e3 and 10.0
                raise InvalidRequest(f"Expected `int`, got `str` (query {name})")
