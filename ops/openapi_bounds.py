"""Integer bounds in the OpenAPI document exactly as the code checks them.

Litestar writes every numeric bound as a float (`ge`, `le`, ... become `minimum`,
`maximum`, ...), so `le=2**62` came out as `4.611686018427388e+18` and `le=2**63 - 1` as
`9.223372036854776e+18`, which is 2**63: one above what the server takes. On an optional
value it drops a bound of 0 (`ge=0`, `gt=0` are falsy to it), so `to_index` declared no
minimum. `exact_bounds` writes them again from their sources: a query or path
parameter's from its handler's signature, a body or answer field's from its struct's
type (`msgspec.inspect`, whose bounds are the `msgspec.Meta` given). A bound left over
(a component whose name Litestar made unique another way) is made an integer where the
float is one exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

import msgspec
from litestar.handlers import HTTPRouteHandler
from litestar.params import ParameterKwarg

__all__ = ["exact_bounds"]

#: msgspec's and Litestar's names of a bound -> OpenAPI's.
_BOUNDS: Final = {
    "ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum",
}  # fmt: skip
_INT_OR_NULL: Final = (msgspec.inspect.IntType, msgspec.inspect.NoneType)
_EXACT_FLOAT: Final = 2**53  # below this a float holding an integer holds it exactly


def exact_bounds(doc: dict[str, Any], handlers: dict[str, HTTPRouteHandler]) -> None:
    """Every integer bound of `doc` (in place) as the code has it. `handlers` maps
    "METHOD /path" to the route's handler."""
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            handler = handlers.get(f"{method.upper()} {path}")
            if isinstance(operation, dict) and handler is not None:
                _parameter_bounds(operation, handler)
    schemas: dict[str, Any] = doc.get("components", {}).get("schemas", {})
    for name, struct in _structs(handlers.values()).items():
        if name in schemas:
            _field_bounds(schemas[name], struct)
    for node in _nodes(doc):
        for key in _BOUNDS.values():
            value = node.get(key)
            if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_FLOAT:
                node[key] = int(value)


def _parameter_bounds(operation: dict[str, Any], handler: HTTPRouteHandler) -> None:
    kwargs: dict[str, Any] = {}
    for name, field in handler.parsed_fn_signature.parameters.items():
        kwarg = field.kwarg_definition
        if isinstance(kwarg, ParameterKwarg):
            kwargs[kwarg.query or kwarg.header or kwarg.cookie or name] = kwarg
    for param in operation.get("parameters", []):
        kwarg = kwargs.get(param.get("name", ""))
        schema = param.get("schema")
        if kwarg is not None and isinstance(schema, dict):
            _set(schema, {b: getattr(kwarg, b, None) for b in _BOUNDS})


def _field_bounds(schema: dict[str, Any], struct: msgspec.inspect.StructType) -> None:
    properties: dict[str, Any] = schema.get("properties", {})
    for field in struct.fields:
        node = properties.get(field.encode_name)
        integer = _int_type(field.type)
        if isinstance(node, dict) and integer is not None:
            _set(node, {b: getattr(integer, b) for b in _BOUNDS})


def _set(node: dict[str, Any], bounds: dict[str, Any]) -> None:
    """The integer `bounds` on `node`, where Litestar puts them (beside a `oneOf`)."""
    for bound, key in _BOUNDS.items():
        value = bounds.get(bound)
        if isinstance(value, int) and not isinstance(value, bool):
            node[key] = value


def _int_type(t: msgspec.inspect.Type) -> msgspec.inspect.IntType | None:
    """The integer type of a field that is one (or one or null)."""
    if isinstance(t, msgspec.inspect.Metadata):
        t = t.type
    if isinstance(t, msgspec.inspect.UnionType):
        ints = [u for u in t.types if isinstance(u, msgspec.inspect.IntType)]
        others = [u for u in t.types if not isinstance(u, _INT_OR_NULL)]
        return ints[0] if len(ints) == 1 and not others else None
    return t if isinstance(t, msgspec.inspect.IntType) else None


def _structs(handlers: Iterable[HTTPRouteHandler]) -> dict[str, msgspec.inspect.StructType]:
    """The structs the routes take and answer (and those inside them), by class name; a
    name two classes share is left out (Litestar names those its own way)."""
    found: dict[str, msgspec.inspect.StructType] = {}
    shared: set[str] = set()
    for handler in handlers:
        signature = handler.parsed_fn_signature
        annotations = [f.annotation for f in signature.parameters.values()]
        for annotation in (*annotations, signature.return_type.annotation):
            try:
                info = msgspec.inspect.type_info(annotation)
            except (TypeError, ValueError):  # not a type msgspec knows (a pool, a request)
                continue
            for struct in _inner_structs(info, set()):  # ids of `info`'s own, alive
                name = struct.cls.__name__
                if name in found and found[name].cls is not struct.cls:
                    shared.add(name)
                found[name] = struct
    return {name: s for name, s in found.items() if name not in shared}


def _inner_structs(t: Any, seen: set[int]) -> Iterator[msgspec.inspect.StructType]:
    if id(t) in seen:
        return
    seen.add(id(t))
    if isinstance(t, msgspec.inspect.StructType):
        yield t
        for field in t.fields:
            yield from _inner_structs(field.type, seen)
        return
    for name in ("type", "item_type", "key_type", "value_type"):
        inner = getattr(t, name, None)
        if isinstance(inner, msgspec.inspect.Type):
            yield from _inner_structs(inner, seen)
    for inner in getattr(t, "types", None) or getattr(t, "item_types", None) or ():
        yield from _inner_structs(inner, seen)


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _nodes(value)
