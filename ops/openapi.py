"""The OpenAPI document as the server really behaves, and its docs page, offline.

`openapi_config(version)` is what `ops.app.create_app` passes to Litestar. Litestar
generates paths, parameters, bodies and success responses from the handlers; `document()`
then replaces everything else, in one place, for every route:

* errors: Litestar's own error shape (`status_code`, `detail`, `extra`) is dropped; each
  route documents the statuses it can answer with the `Error` schema (`{"code",
  "message"}`, `ops.errors.ErrorBody`), the codes in the description and one example per
  code. The statuses come from the route (`_derived`: 400 always, 404 for path
  parameters, 413 for bodies, 401/429 when signed, 403 behind a role guard, 503 always)
  and from `ops.openapi_errors.ROUTE_ERRORS`, the table of what each route raises itself.
  `/openai/v1` documents OpenAI's error shape instead (`OpenAIError`).
* security: the three signed headers as apiKey schemes (`X-Tokex-Key`,
  `X-Tokex-Timestamp`, `X-Tokex-Signature`, all three required together, with the
  signing rule) on every signed route, `security: []` on public ones, and bearer
  inference keys on `/openai/v1`.
* examples: request bodies of the main commands (`REQUEST_EXAMPLES`); summaries in words
  (the docstring's first sentence) where Litestar made one of the handler's name.
* integer bounds exactly as the code checks them (`ops.openapi_bounds`: Litestar's are
  floats, 2**63 - 1 written as 2**63, and a bound of 0 on an optional value dropped).
* structs sent as JSON arrays (a book level `[price, quantity, orders]`) are documented
  as arrays (`ARRAY_LIKE`), not as the objects Litestar takes them for.

The docs page (`/schema`, also `/schema/swagger`) is Swagger UI, its script, styles and
icon served from this package (`ops/openapi_ui/`, Apache-2.0, its LICENSE and NOTICE
beside it) at `/schema/assets/...`: it renders with no network.
"""

from __future__ import annotations

import copy
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import msgspec
from litestar import Litestar, Request
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.router import Router
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router

from market.auth import PUBLIC_OPT_KEY, PUBLIC_PATH_PREFIXES
from market.gateway.errors import error_body
from market.signing import HEADER_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP
from ops.openapi_bounds import exact_bounds
from ops.openapi_errors import (
    AUTH_401_CODES,
    FORBIDDEN_ROLE,
    OPENAI_ERRORS,
    ROUTE_ERRORS,
    ErrorSpec,
)
from schemas.trading import BookLevel
from schemas.wire_time import DEPRECATED_FIELDS, DEPRECATED_QUERY_PARAMETERS

__all__ = ["ASSETS_DIR", "ASSETS_PATH", "document", "openapi_config"]

ASSETS_DIR: Final = Path(__file__).with_name("openapi_ui")
SCHEMA_PATH: Final = "/schema"
ASSETS_PATH: Final = f"{SCHEMA_PATH}/assets"
OPENAI_PREFIX: Final = "/openai/v1"
ERROR_REF: Final = "#/components/schemas/Error"
OPENAI_ERROR_REF: Final = "#/components/schemas/OpenAIError"
SIGNED: Final[dict[str, list[str]]] = {"TokexKey": [], "TokexTimestamp": [], "TokexSignature": []}
_STATE_KEY: Final = "tokex_openapi_document"

DESCRIPTION: Final = f"""An exchange and clearing house for AI inference tokens.

**Signed requests.** Every route not marked public needs three headers:
`{HEADER_KEY}` (the key id, `key_` and 16 hex digits), `{HEADER_TIMESTAMP}` (Unix time in
milliseconds, within 30 s of the server's clock) and `{HEADER_SIGNATURE}`: the base64
Ed25519 signature of the UTF-8 bytes
`{{timestamp}}\\n{{METHOD}}\\n{{path with query, exactly as sent}}\\n{{hex SHA-256 of the body}}`
(empty body: the SHA-256 of no bytes). Each signature is accepted once. `TokexClient`
(`market.client`) and the `tokex` CLI sign for you.

**Errors** are always `{{"code", "message"}}`: `code` is stable and machine-readable,
`message` is for people. 429 and 503 carry `Retry-After` (seconds). `/openai/v1` answers
in OpenAI's error shape, so any OpenAI SDK raises its own exceptions.

**Amounts** (money and token quantities) are integers on the wire, never floats.

**Times** are integers of Unix milliseconds, every one named `..._ms`; an instrument's
window (as in its symbol) and the durations measured against it are seconds, named
`..._s`. Fields and query parameters marked deprecated are the old names, still accepted
for one version.
"""

_STATUS_TEXT: Final = {
    400: "Bad request: a parameter or the body is malformed or breaks a rule",
    401: "Not (validly) authenticated",
    402: "No entitlement (or key budget) left",
    403: "Authenticated, but not allowed",
    404: "Not found (another account's ids answer 404 too)",
    409: "Conflicts with existing state",
    413: "Body too large",
    422: "Well-formed but refused by a business rule",
    429: "Rate limited: retry after `Retry-After` seconds",
    502: "The upstream inference endpoint failed; nothing was charged",
    503: "Unavailable for now: retry after `Retry-After` seconds",
}
_MESSAGES: Final = {
    "invalid_request": "Expected `int`, got `str` - at `$.quantity`",
    "missing_signature": "request is not signed: missing X-Tokex-Signature",
    "stale_timestamp": "X-Tokex-Timestamp is -41.2 s from the server's clock "
    "(at most 30 s allowed)",
    "bad_signature": "signature does not match the request (method, path with query, body, "
    "timestamp) under this key",
    "forbidden_role": "role buyer may not do this (needs: operator)",
    "rate_limited": "rate limit of 100/s (burst 200) exceeded for this key",
    "payload_too_large": "Request Entity Too Large",
    "not_found": "no such resource: GET /v1/orders/abc",
    "database_unavailable": "the database is unavailable; try again shortly",
    "insufficient_funds": "order c-1 rejected: insufficient_funds",
}
_RETRY_AFTER: Final = {
    "description": "Seconds to wait before retrying",
    "schema": {"type": "integer", "minimum": 0},
}

#: Structs encoded as JSON arrays (`array_like=True`), by component schema name.
ARRAY_LIKE: Final[dict[str, type[msgspec.Struct]]] = {"BookLevel": BookLevel}

#: Example request bodies, by component schema name.
REQUEST_EXAMPLES: Final[dict[str, dict[str, Any]]] = {
    "CreateInstrument": {
        "symbol": "llama-3.1-70b/2030-12-01T00Z/1h",
        "lot_size": 1000,
        "tick_size": 5,
        "price_min": 5,
        "price_max": 100000,
        "maker_fee_bps": 10,
        "taker_fee_bps": 20,
    },
    "PlaceOrder": {
        "client_order_id": "c-1",
        "instrument": "llama-3.1-70b/2030-12-01T00Z/1h",
        "side": "buy",
        "quantity": 5000,
        "price": 120,
    },
    "Deposit": {"deposit_id": "dep-1", "account_id": "acc_0123456789abcdef", "amount": 1000000},
    "Listing": {
        "listing_id": "cap-1",
        "instrument": "llama-3.1-70b/2030-12-01T00Z/1h",
        "quantity": 100000,
    },
    "AmendOrder": {"price": 125},
    "CancelAll": {"instrument": "llama-3.1-70b/2030-12-01T00Z/1h"},
    "CloseInstrument": {"instrument": "llama-3.1-70b/2030-12-01T00Z/1h"},
    "WithdrawalRequest": {"withdrawal_id": "wd-1", "amount": 50000},
    "CreateInferenceKey": {"token_budget": 100000},
}

#: Summaries of routes whose handler has neither a summary nor a docstring.
SUMMARIES: Final = {
    "GET /v1/instruments": "Every instrument",
    "GET /v1/instruments/{symbol}": "One instrument",
    "GET /v1/orders/{order_id}": "One of your orders, with its fills",
    "DELETE /v1/orders/{order_id}": "Cancel one of your orders",
    "GET /v1/fills": "Your fills, newest first",
}


class SplitRoute(msgspec.Struct, frozen=True):
    """One action of a `:path` route whose last path segment picks the action."""

    path: str  # the documented path
    operation_id: str
    summary: str
    description: str


#: `:path` routes the server serves as several (`market.api.withdrawal_outcome`: a
#: withdrawal id may hold `/`, so the id and its outcome share one `:path` parameter),
#: documented as the routes a client calls: generated "METHOD /path" -> (the `:path`
#: parameter, its documented name), the actions.
SPLIT_ROUTES: Final[dict[str, tuple[tuple[str, str], tuple[SplitRoute, ...]]]] = {
    "POST /v1/withdrawals/{account_id}/{withdrawal_path}": (
        ("withdrawal_path", "withdrawal_id"),
        (
            SplitRoute(
                "/v1/withdrawals/{account_id}/{withdrawal_id}/paid",
                "V1WithdrawalsAccountIdWithdrawalIdPaidWithdrawalPaid",
                "The operator paid it out: the hold is posted to the operator's bank",
                "The operator paid it out: the hold is posted to the operator's bank. "
                "Idempotent;\n409 `withdrawal_settled` if it was marked failed.",
            ),
            SplitRoute(
                "/v1/withdrawals/{account_id}/{withdrawal_id}/failed",
                "V1WithdrawalsAccountIdWithdrawalIdFailedWithdrawalFailed",
                "The payout failed: the hold is voided",
                "The payout failed: the hold is voided. Idempotent; 409 `withdrawal_settled` "
                "if paid.",
            ),
        ),
    ),
}

_OPENAI_REQUEST: Final = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": {"type": "string", "description": "a model the key may use"},
        "stream": {"type": "boolean"},
        "max_tokens": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": True,
}


#: A metered call with `"stream": true`: its 200 is server-sent events, not JSON.
_EVENT_STREAM: Final = {
    "schema": {
        "type": "string",
        "description": 'With `"stream": true`: server-sent events, `data: {chunk}` lines '
        "(OpenAI's chunks), then `data: [DONE]`",
    }
}


class Auth(StrEnum):
    PUBLIC = "public"
    SIGNED = "signed"
    BEARER = "bearer"


# --------------------------------------------------------------------------- the document


def document(app: Litestar, generated: dict[str, Any]) -> dict[str, Any]:
    """The served document: Litestar's `generated` one, finished (cached per app)."""
    cached = app.state.get(_STATE_KEY)
    if cached is not None and cached[0] is generated:
        finished: dict[str, Any] = cached[1]
        return finished
    finished = finish(generated, _handlers(app))
    app.state[_STATE_KEY] = (generated, finished)
    return finished


def finish(generated: dict[str, Any], handlers: dict[str, HTTPRouteHandler]) -> dict[str, Any]:
    """`generated` with errors, security and examples as the server answers (a copy).

    `handlers` maps "METHOD /path" to the route's handler."""
    doc = copy.deepcopy(generated)
    doc["info"]["description"] = DESCRIPTION
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(_error_schemas())
    components["securitySchemes"] = _security_schemes()
    _, array_like = msgspec.json.schema_components(
        ARRAY_LIKE.values(), ref_template="#/components/schemas/{name}"
    )
    for name in ARRAY_LIKE:  # Litestar documents them as objects
        if name in schemas:
            schemas[name] = array_like[name]
    for name, example in REQUEST_EXAMPLES.items():
        if name in schemas:
            schemas[name]["examples"] = [example]
    handlers = _split_routes(doc, handlers)
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            if method in ("get", "put", "post", "delete", "patch"):
                key = f"{method.upper()} {path}"
                _finish_operation(key, path, operation, handlers.get(key))
    _mark_deprecated(doc)
    exact_bounds(doc, handlers)  # Litestar's bounds are floats (ops.openapi_bounds)
    return doc


def _split_routes(
    doc: dict[str, Any], handlers: dict[str, HTTPRouteHandler]
) -> dict[str, HTTPRouteHandler]:
    """`SPLIT_ROUTES` documented as their actions (in `doc`); the handlers, by action too."""
    handlers = dict(handlers)
    paths: dict[str, Any] = doc.get("paths", {})
    for key, ((name, documented), actions) in SPLIT_ROUTES.items():
        method, path = key.split(" ", 1)
        operation = paths.get(path, {}).pop(method.lower(), None)
        if operation is None:
            continue
        if not paths[path]:
            del paths[path]
        for action in actions:
            paths.setdefault(action.path, {})[method.lower()] = _action(
                operation, name, documented, action
            )
            if key in handlers:
                handlers[f"{method} {action.path}"] = handlers[key]
    return handlers


def _action(
    operation: dict[str, Any], name: str, documented: str, action: SplitRoute
) -> dict[str, Any]:
    out = copy.deepcopy(operation)
    out.update(
        operationId=action.operation_id, summary=action.summary, description=action.description
    )
    for param in out.get("parameters", []):
        if param.get("in") == "path" and param.get("name") == name:
            param["name"] = documented
            param["description"] = "percent-encoded (it may hold `/`, `?` or `%`)"
    return out


def _deprecated(node: dict[str, Any], new: str) -> dict[str, Any]:
    text = f"Deprecated: the old name of `{new}`, accepted for one version; send `{new}`."
    return {**node, "deprecated": True, "description": text}


def _mark_deprecated(doc: dict[str, Any]) -> None:
    """The old names of time fields and query parameters (`schemas.wire_time`)."""
    schemas = doc["components"]["schemas"]
    for name, renamed in DEPRECATED_FIELDS.items():
        properties = schemas.get(name, {}).get("properties", {})
        for old, new in renamed.items():
            if old in properties:
                properties[old] = _deprecated(properties[old], new)
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            params = operation.get("parameters", [])
            for n, param in enumerate(params):
                to = DEPRECATED_QUERY_PARAMETERS.get(param.get("name", ""))
                if param.get("in") == "query" and to is not None:
                    params[n] = _deprecated(param, to)


def _handlers(app: Litestar) -> dict[str, HTTPRouteHandler]:
    out: dict[str, HTTPRouteHandler] = {}
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                for method in handler.http_methods:
                    out[f"{method} {route.path_format}"] = handler
    return out


def auth_of(path: str, handler: HTTPRouteHandler | None) -> Auth:
    """How a route authenticates (as `market.auth.AuthMiddleware` decides)."""
    if path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/"):
        return Auth.BEARER
    public_path = any(path == p or path.startswith(p + "/") for p in PUBLIC_PATH_PREFIXES)
    if public_path or (handler is not None and handler.opt.get(PUBLIC_OPT_KEY)):
        return Auth.PUBLIC
    return Auth.SIGNED


def documented_errors(
    key: str, path: str, operation: dict[str, Any], handler: HTTPRouteHandler | None
) -> dict[int, list[str]]:
    """Status -> codes a route can answer besides success."""
    auth = auth_of(path, handler)
    if auth is Auth.BEARER:
        return _by_status(OPENAI_ERRORS.get(key, ()))
    return _by_status((*_derived(auth, operation, handler), *ROUTE_ERRORS.get(key, ())))


def _derived(
    auth: Auth, operation: dict[str, Any], handler: HTTPRouteHandler | None
) -> list[ErrorSpec]:
    """What a route answers for being a route of its kind."""
    out: list[ErrorSpec] = [(400, "invalid_request")]
    params = operation.get("parameters", [])
    out.append((400, "unknown_query_parameter"))  # ops.wire.strict_query, on every route
    if any(p.get("in") == "path" for p in params):
        out.append((404, "not_found"))  # a path that matches no route (e.g. not an int)
    if "requestBody" in operation:
        out.append((413, "payload_too_large"))
    if auth is Auth.SIGNED:
        out += [(401, code) for code in AUTH_401_CODES]
        out.append((429, "rate_limited"))
        if handler is not None and handler.resolve_guards():
            out.append(FORBIDDEN_ROLE)
    out.append((503, "database_unavailable"))
    out.append((503, "ledger_regressed"))  # ops.middleware.DatabaseGate, ops.ledger_head
    return out


def _by_status(specs: tuple[ErrorSpec, ...] | list[ErrorSpec]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for status, code in specs:
        codes = out.setdefault(status, [])
        if code not in codes:
            codes.append(code)
    return dict(sorted(out.items()))


def _finish_operation(
    key: str, path: str, operation: dict[str, Any], handler: HTTPRouteHandler | None
) -> None:
    auth = auth_of(path, handler)
    if auth is Auth.BEARER and "requestBody" not in operation and key.startswith("POST"):
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _OPENAI_REQUEST}},
        }
    _summarize(key, operation)
    responses: dict[str, Any] = operation.get("responses", {})
    kept = {status: r for status, r in responses.items() if status.startswith("2")}
    if path.startswith("/v1/reports/"):
        for response in kept.values():
            response["content"] = {
                "application/json": {"schema": {}},
                "text/csv; charset=utf-8": {"schema": {"type": "string"}},
            }
    if auth is Auth.BEARER and key.startswith("POST"):  # the metered calls, streamed or not
        for response in kept.values():
            response.setdefault("content", {})["text/event-stream"] = _EVENT_STREAM
    ref = OPENAI_ERROR_REF if auth is Auth.BEARER else ERROR_REF
    for status, codes in documented_errors(key, path, operation, handler).items():
        kept[str(status)] = _error_response(status, codes, ref, auth is Auth.BEARER)
    operation["responses"] = kept
    operation["security"] = {
        Auth.PUBLIC: [],
        Auth.SIGNED: [SIGNED],
        Auth.BEARER: [{"InferenceKey": []}],
    }[auth]


def _summarize(key: str, operation: dict[str, Any]) -> None:
    """A summary in words where Litestar made one of the handler's name ("PlaceOrder"):
    the first sentence of the handler's docstring, or `SUMMARIES`'."""
    summary, description = operation.get("summary", ""), operation.get("description")
    if " " in summary:
        return
    if key in SUMMARIES:
        operation["summary"] = SUMMARIES[key]
    elif description:
        paragraph = " ".join(description.split("\n\n", 1)[0].split())
        sentence = paragraph.split(". ", 1)[0].rstrip(".")
        if len(sentence) > 80:  # the part before a colon says what the route does
            sentence = sentence.split(": ", 1)[0]
        operation["summary"] = sentence if len(sentence) <= 100 else sentence[:97] + "..."


def _error_response(status: int, codes: list[str], ref: str, openai: bool) -> dict[str, Any]:
    examples = {}
    for code in codes:
        message = _MESSAGES.get(code, code.replace("_", " "))
        value = error_body(status, code, message) if openai else {"code": code, "message": message}
        examples[code] = {"value": value}
    listed = ", ".join(f"`{code}`" for code in codes)
    response: dict[str, Any] = {
        "description": f"{_STATUS_TEXT.get(status, 'Error')}. Codes: {listed}",
        "content": {"application/json": {"schema": {"$ref": ref}, "examples": examples}},
    }
    if status in (429, 503):
        response["headers"] = {"Retry-After": _RETRY_AFTER}
    return response


def _error_schemas() -> dict[str, Any]:
    return {
        "Error": {
            "type": "object",
            "description": "Every error of the tokex API (ops.errors).",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "stable, machine-readable"},
                "message": {"type": "string", "description": "for people"},
            },
            "additionalProperties": False,
        },
        "OpenAIError": {
            "type": "object",
            "description": "Errors of /openai/v1, in OpenAI's shape.",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "code"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "code": {"type": "string"},
                    },
                }
            },
        },
    }


def _security_schemes() -> dict[str, Any]:
    rule = (
        "All three headers together. The signature is base64 Ed25519 over "
        "`{timestamp}\\n{METHOD}\\n{path with query}\\n{hex SHA-256 of the body}`."
    )
    return {
        "TokexKey": {
            "type": "apiKey",
            "in": "header",
            "name": HEADER_KEY,
            "description": f"The signing key's id (`key_` and 16 hex digits). {rule}",
        },
        "TokexTimestamp": {
            "type": "apiKey",
            "in": "header",
            "name": HEADER_TIMESTAMP,
            "description": f"Unix time in milliseconds, within 30 s of the server's. {rule}",
        },
        "TokexSignature": {
            "type": "apiKey",
            "in": "header",
            "name": HEADER_SIGNATURE,
            "description": f"Each signature is accepted once. {rule}",
        },
        "InferenceKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "An inference key `tkx_...` (POST /v1/inference-keys).",
        },
    }


# --------------------------------------------------------------------------- rendering


class DocumentJson(JsonRenderPlugin):
    """`/schema/openapi.json`: the finished document."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, document(request.app, openapi_schema))


class DocsPage(SwaggerRenderPlugin):
    """Swagger UI on the finished document, with its assets from this package."""

    def __init__(self) -> None:
        super().__init__(
            js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            css_url=f"{ASSETS_PATH}/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
            path=["/", "/swagger"],
        )

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, document(request.app, openapi_schema))

    def receive_router(self, router: Router) -> None:
        super().receive_router(router)
        router.register(
            create_static_files_router(
                path="/assets", directories=[ASSETS_DIR], include_in_schema=False,
                name="openapi_assets",
            )
        )  # fmt: skip


def openapi_config(version: str) -> OpenAPIConfig:
    return OpenAPIConfig(
        title="tokex",
        version=version,
        path=SCHEMA_PATH,
        use_handler_docstrings=True,  # a handler's docstring is its operation's description
        render_plugins=[DocsPage(), DocumentJson(path="/openapi.json")],
    )
