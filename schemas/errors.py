"""Domain errors: one base type, a stable machine-readable code, a kind.

Every error that a user can cause derives from `DomainError`. The API maps the
`kind` to an HTTP status in one place (`STATUS_OF_KIND`, which `ops.errors` and the
gateway's OpenAI-shaped errors both use); the code travels to the client unchanged
as `{"code": ..., "message": ...}`.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """What sort of failure this is; the API turns it into a status code."""

    INVALID = "invalid"  # 400/422: the request itself is malformed or breaks a rule
    UNAUTHORIZED = "unauthorized"  # 401
    FORBIDDEN = "forbidden"  # 403
    NOT_FOUND = "not_found"  # 404
    CONFLICT = "conflict"  # 409: clashes with existing state (idempotency, duplicates)
    REJECTED = "rejected"  # 422: well-formed but refused by a business rule (funds, state)
    RATE_LIMITED = "rate_limited"  # 429
    UNAVAILABLE = "unavailable"  # 503


#: The HTTP status of each kind: the one map both error shapes use (tokex's own in
#: `ops.errors`, OpenAI's in `market.gateway.errors`).
STATUS_OF_KIND: dict[ErrorKind, int] = {
    ErrorKind.INVALID: 400,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.REJECTED: 422,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.UNAVAILABLE: 503,
}


class DomainError(Exception):
    """Base of every error a user can cause. Subclasses set `code` and `kind`."""

    code: str = "error"
    kind: ErrorKind = ErrorKind.INVALID

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"
