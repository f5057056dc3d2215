"""Errors the market core raises. Order rejects are events, not exceptions; these
are for invalid instrument definitions, bad symbols and misuse of the engine."""

from __future__ import annotations

from schemas.errors import DomainError, ErrorKind


class InvalidSymbol(DomainError):
    code = "invalid_symbol"
    kind = ErrorKind.INVALID


class InvalidInstrument(DomainError):
    code = "invalid_instrument"
    kind = ErrorKind.INVALID


class DuplicateInstrument(DomainError):
    code = "duplicate_instrument"
    kind = ErrorKind.CONFLICT


class UnknownInstrument(DomainError):
    code = "unknown_instrument"
    kind = ErrorKind.NOT_FOUND


class InvalidSnapshot(DomainError):
    code = "invalid_snapshot"
    kind = ErrorKind.INVALID
