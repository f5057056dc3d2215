"""The one place where exceptions become JSON errors `{"code": ..., "message": ...}`.

* `DomainError`: its `code`, its message, the status of its `kind`; a `Retry-After`
  header for the errors a retry soon can cure (`RETRY_AFTER_BY_ERROR_S`, e.g. 503
  `exchange_busy` when the sequencer's queue is full).
* Litestar's HTTP exceptions (validation, unknown route, wrong method, body too
  large, ...): a stable code per status, e.g. 400 `invalid_request` with the
  decoder's words on which field is wrong.
* `asyncpg.DataError` (a value the database refuses: NUL in text, an integer
  beyond 64 bits): 400 `invalid_request`.
* The database out of reach (`DATABASE_DOWN`: refused or lost connections, a
  PostgreSQL shutting down or starting up, out of connections, asyncpg's "another
  operation is in progress" on a connection a failure left behind): 503
  `database_unavailable` with `Retry-After`; the database supervisor (if the
  exchange runs here) is told, so it probes at once.
* Every 503 carries `Retry-After` (1 s unless the error says otherwise).
* Under `/openai/v1` the gateway's own handlers (`market.gateway.errors`) answer in
  OpenAI's shape; so do the answers made here for those paths before a route runs
  (`error_bytes`: the middleware's 400 and 503), the router's 404 and 405 (no gateway
  route matched) and a database out of reach.
* A client that hung up before its body was in (Litestar's 500 "client disconnected
  prematurely"): no answer reaches it; a line at info and the status 499 for the access
  line and the metrics (`client_closed`), not a server error.
* Anything else: 500 `internal_error` with a generic message; the traceback
  goes to the log, never to the client.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import asyncpg
import asyncpg.exceptions._base as asyncpg_base
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from ledger.outage import CLIENT_FAULTS, DATABASE_DOWN
from market.asgi import CLIENT_CLOSED, client_left
from market.gateway.errors import error_body as openai_error_body
from market.sequencer.errors import ExchangeBusy
from ops.logs import clipped
from ops.wire import query_alias
from schemas.errors import STATUS_OF_KIND, DomainError, ErrorKind

log = logging.getLogger(__name__)

#: Codes for errors raised by the framework itself rather than by our code.
CODE_OF_STATUS: dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}

INTERNAL_MESSAGE = "internal error; it has been logged"
OPENAI_PREFIX = "/openai/v1"  # the gateway's routes answer in OpenAI's error shape
RETRY_AFTER_S = 1

DATABASE_UNAVAILABLE_CODE = "database_unavailable"
DATABASE_UNAVAILABLE_MESSAGE = "the database is unavailable; try again shortly"


class DatabaseUnavailable(DomainError):
    """The database supervisor does not have the database back (the sequencer process's
    answer to a gateway's command meanwhile: `ops.workers`)."""

    code = DATABASE_UNAVAILABLE_CODE
    kind = ErrorKind.UNAVAILABLE


#: Seconds to wait before a retry, sent as `Retry-After`, for errors that carry none.
RETRY_AFTER_BY_ERROR_S: dict[type[DomainError], int] = {
    ExchangeBusy: 1,  # the queue drains a full batch in a few ms
}


class ErrorBody(msgspec.Struct, frozen=True):
    """The body of every error response."""

    code: str
    message: str


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response[ErrorBody]:
    return Response(
        ErrorBody(code=code, message=message),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def _is_openai(path: str) -> bool:
    """Whether `path` is the gateway's (`/openai/v1`), whose clients parse OpenAI's shape."""
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


def error_bytes(path: str, status: int, code: str, message: str) -> bytes:
    """An error body for a response made before any route runs (ASGI middleware, the
    database being out of reach): OpenAI's shape under `/openai/v1` (its clients parse
    that), `{"code", "message"}` everywhere else."""
    if _is_openai(path):
        return msgspec.json.encode(openai_error_body(status, code, message))
    return msgspec.json.encode(ErrorBody(code=code, message=message))


def status_of(error: DomainError) -> int:
    return STATUS_OF_KIND.get(error.kind, 400)


def _domain_error(request: Request[Any, Any, Any], exc: DomainError) -> Response[ErrorBody]:
    status = status_of(exc)
    if status >= 500:
        path = clipped(request.url.path)
        log.warning("%s %s -> %s %s: %s", request.method, path, status, exc.code, exc)
    # A DomainError may carry response headers (e.g. Retry-After on rate_limited).
    headers: dict[str, str] | None = getattr(exc, "headers", None)
    retry_after_s = RETRY_AFTER_BY_ERROR_S.get(type(exc))
    if retry_after_s is None and status == 503:
        retry_after_s = RETRY_AFTER_S
    if retry_after_s is not None and not (headers and "Retry-After" in headers):
        headers = {**(headers or {}), "Retry-After": str(retry_after_s)}
    return error_response(status, exc.code, exc.message, headers)


#: Litestar's complaint of a body route sent no body: the `KeyError` of its missing
#: `data` argument, "'data'" (`_signature.model`), said in words instead.
_NO_BODY = repr("data")
NO_BODY_MESSAGE = "this route needs a JSON body, and the request has none"


def _validation_message(request: Request[Any, Any, Any], exc: HTTPException) -> str:
    """Say which field is wrong, from Litestar's `extra` list of decoder complaints, by
    the name the client sent (a query parameter's alias, not the handler's argument)."""
    parts = []
    if isinstance(exc.extra, list):
        for item in exc.extra:
            if isinstance(item, dict):
                text = str(item.get("message", "")).strip()
                key, source = item.get("key"), item.get("source")
                source = getattr(source, "value", source)  # ParamType enum -> "query"
                if source == "body" and key == "data" and text == _NO_BODY:
                    parts.append(NO_BODY_MESSAGE)
                    continue
                if source == "query" and isinstance(key, str):
                    key = query_alias(request, key)
                where = f"{source} {key}" if source and key else (key or source)
                if where and (not text or str(key) not in text):
                    text = f"{text} ({where})" if text else str(where)
                if text:
                    parts.append(text)
            else:
                parts.append(str(item))
    return "; ".join(parts) or exc.detail or "invalid request"


def _http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if client_left(exc):
        return client_closed(request)
    status = exc.status_code
    code = CODE_OF_STATUS.get(status) or f"http_{status}"
    if status >= 500:
        # Framework faults (misconfiguration, ...) are ours, not the client's: say little.
        log.error("%s %s -> %s", request.method, clipped(request.url.path), status, exc_info=exc)
        message = INTERNAL_MESSAGE if status == 500 else HTTPStatus(status).phrase.lower()
    elif status == 400:
        message = _validation_message(request, exc)
    elif status == 404 and exc.detail == HTTPStatus.NOT_FOUND.phrase:
        message = f"no such resource: {request.method} {request.url.path}"
    elif status == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
    else:
        message = exc.detail or HTTPStatus(status).phrase
    headers = exc.headers
    if status == 503 and not (headers and "Retry-After" in headers):
        headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_S)}
    if _is_openai(request.url.path):  # no gateway route matched (404, 405): its shape still
        body = openai_error_body(status, code, message)
        return Response(body, status_code=status, headers=headers, media_type="application/json")
    return error_response(status, code, message, headers)


def client_closed(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The client hung up before its request was in (it declared more body than it sent):
    nobody to answer, so a line at info, and the answer (to no one) `CLIENT_CLOSED`, 499,
    so the access line and the request metrics count no server error."""
    path = clipped(request.url.path)
    log.info("%s %s: the client went away before its request was in", request.method, path)
    return Response(b"", status_code=CLIENT_CLOSED)


def database_unavailable(retry_after_s: int = RETRY_AFTER_S) -> Response[ErrorBody]:
    return error_response(
        503,
        DATABASE_UNAVAILABLE_CODE,
        DATABASE_UNAVAILABLE_MESSAGE,
        {"Retry-After": str(retry_after_s)},
    )


def _database_down(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.warning(
        "%s %s -> 503: database unreachable: %s: %s",
        request.method,
        clipped(request.url.path),
        type(exc).__name__,
        exc,
    )
    supervisor = request.app.state.get("database_supervisor")
    if supervisor is not None:
        supervisor.report_failure()
    if _is_openai(request.url.path):  # the gateway's clients: its shape
        return Response(
            openai_error_body(503, DATABASE_UNAVAILABLE_CODE, DATABASE_UNAVAILABLE_MESSAGE),
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    return database_unavailable()


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    path = clipped(request.url.path)
    log.error("unhandled error in %s %s", request.method, path, exc_info=exc)
    return error_response(500, "internal_error", INTERNAL_MESSAGE)


def _data_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    """A value the database cannot take (a NUL byte in text, an integer beyond 64 bits):
    the client's input, so a 400, never a 500."""
    path = clipped(request.url.path)
    log.info("%s %s: value refused by the database: %s", request.method, path, exc)
    return error_response(
        400, "invalid_request", "a value in the request is out of range or not valid text"
    )


def exception_handlers() -> ExceptionHandlersMap:
    """Handlers for `Litestar(exception_handlers=...)`; Litestar picks the most specific class."""
    return {
        DomainError: _domain_error,
        HTTPException: _http_exception,
        asyncpg.DataError: _data_error,
        **dict.fromkeys(DATABASE_DOWN, _database_down),
        # InterfaceErrors that are about the request or the code, not the connection:
        asyncpg_base.DataError: _data_error,  # "invalid input for query argument"
        **dict.fromkeys(CLIENT_FAULTS, _unexpected),
        Exception: _unexpected,
    }
