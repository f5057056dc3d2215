"""Errors of `/openai/v1`, in OpenAI's shape: `{"error": {"message", "type", "code"}}`.

Any OpenAI SDK raises them as its own exceptions (`openai.APIStatusError` and subclasses,
by status). The router installs `openai_exception_handlers()`; every other route keeps
tokex's `{"code", "message"}` (ops.errors).

* 400 `invalid_request_error` (a malformed body, an unsupported parameter),
* 401 `invalid_api_key` (no key, unknown, revoked, expired),
* 402 `insufficient_entitlement` (no entitlement left for this model now, or the key's
  budget is spent),
* 404 `model_not_found`, 413 `payload_too_large`,
* 429 `rate_limited` (the key's calls per second, `TOKEX_GATEWAY_RATE_LIMIT` and
  `TOKEX_GATEWAY_RATE_BURST`) and `too_many_calls_in_flight` (the account's calls in
  flight, `TOKEX_GATEWAY_MAX_IN_FLIGHT`), with Retry-After,
* 400 `upstream_refused` (the upstream refused the request itself: its message, trimmed),
* 502 `upstream_error` / `upstream_timeout` (nothing charged),
* 503 `no_healthy_endpoint`, `endpoints_busy`, `exchange_unavailable`, `database_unavailable`
  (with Retry-After),
* `charge_unavailable`: a streamed call was served but its receipt could not be committed
  now, an error event in place of the stream's last events (no status: the stream has
  begun). A non-streamed call in that case gets its body (200) with `x-tokex-charge:
  pending`, not an error: a 503 would withhold an answer the buyer is charged for, and
  the SDKs would retry it (a second call, charged too).
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from ledger.outage import CLIENT_FAULTS, DATABASE_DOWN
from schemas.errors import STATUS_OF_KIND, DomainError, ErrorKind

log = logging.getLogger(__name__)

_TYPE_OF_STATUS = {
    400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
    403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
    502: "upstream_error", 503: "service_unavailable",
}  # fmt: skip
_CODE_OF_STATUS = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
                   413: "payload_too_large", 415: "unsupported_media_type"}  # fmt: skip


class GatewayError(DomainError):
    """An error of the gateway with an HTTP status of its own (402, 502)."""

    status = 400


class InsufficientEntitlement(GatewayError):
    code = "insufficient_entitlement"
    kind = ErrorKind.REJECTED
    status = 402


class UpstreamFailed(GatewayError):
    code = "upstream_error"
    kind = ErrorKind.UNAVAILABLE
    status = 502


class UpstreamRefused(GatewayError):
    """The upstream refused the request itself (400, 413, 422: a context too long, a
    parameter it does not take): the buyer's to correct, so a 400 with its message, not
    a 502 that the SDKs would send twice more, each served and unpaid."""

    code = "upstream_refused"
    kind = ErrorKind.INVALID
    status = 400


class NoEndpoint(GatewayError):
    code = "no_healthy_endpoint"
    kind = ErrorKind.UNAVAILABLE
    status = 503


class ChargeUnavailable(GatewayError):
    """A streamed call was served but its receipt could not be committed now: the buyer
    gets this as the error event in place of the stream's tail (the charge is retried;
    see `meter.Meter`). Never an HTTP status (see the module)."""

    code = "charge_unavailable"
    kind = ErrorKind.UNAVAILABLE
    status = 503


class TooManyInFlight(GatewayError):
    """The account has as many calls in flight as the gateway allows one account."""

    code = "too_many_calls_in_flight"
    kind = ErrorKind.RATE_LIMITED
    status = 429

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class UnsupportedParameter(GatewayError):
    code = "unsupported_parameter"
    kind = ErrorKind.INVALID
    status = 400


class ModelNotFound(GatewayError):
    code = "model_not_found"
    kind = ErrorKind.NOT_FOUND
    status = 404


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    kind = _TYPE_OF_STATUS.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "code": code}}


def status_of(exc: DomainError) -> int:
    if isinstance(exc, GatewayError):
        return exc.status
    return STATUS_OF_KIND.get(exc.kind, 400)


class PayloadTooLarge(GatewayError):
    """A body beyond the gateway's limit (`openai_api.MAX_BODY_BYTES`), read by the lean
    path (`openai_asgi`); Litestar's own check answers the same through `_http`."""

    code = "payload_too_large"
    kind = ErrorKind.INVALID
    status = 413


#: An error answer: status, body (OpenAI's shape), headers.
ErrorAnswer = tuple[int, dict[str, Any], dict[str, str]]


def answer_of(exc: BaseException, supervisor: Any = None) -> ErrorAnswer:
    """What a route of /openai/v1 answers for `exc`: the one mapping of the gateway's
    errors, used by Litestar's handlers (below) and by the lean path (`openai_asgi`). A
    lost database is 503 `database_unavailable` (and tells the database supervisor, if
    any); anything unexpected is 500 `internal_error`, logged."""
    if isinstance(exc, DomainError):
        status = status_of(exc)
        headers = dict(getattr(exc, "headers", {}) or {})
        if status == 503:
            headers.setdefault("Retry-After", "1")
        return status, error_body(status, exc.code, exc.message), headers
    if isinstance(exc, DATABASE_DOWN) and not isinstance(exc, CLIENT_FAULTS):
        log.warning("gateway: database unreachable: %s: %s", type(exc).__name__, exc)
        if supervisor is not None:
            supervisor.report_failure()
        body = error_body(503, "database_unavailable", "the database is unavailable; try again")
        return 503, body, {"Retry-After": "1"}
    log.error("gateway: unexpected %s", type(exc).__name__, exc_info=exc)
    return 500, error_body(500, "internal_error", "internal error; it has been logged"), {}


def _answer(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    supervisor = request.app.state.get("database_supervisor")
    status, body, headers = answer_of(exc, supervisor)
    return Response(body, status_code=status, headers=headers)


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    code = _CODE_OF_STATUS.get(status, "error")
    return Response(error_body(status, code, str(exc.detail)), status_code=status)


def openai_exception_handlers() -> ExceptionHandlersMap:
    return {
        DomainError: _answer, HTTPException: _http,
        **dict.fromkeys(DATABASE_DOWN, _answer),
        **dict.fromkeys(CLIENT_FAULTS, _answer),
        Exception: _answer,
    }  # fmt: skip
