"""Identifier types refuse a trailing newline: Python's `$` matches before a final
newline, so "pay\n" or "acct\n" would otherwise decode as a valid identifier."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from schemas.disputes import DisputeId, KeyId
from schemas.gateway import Credential, EndpointId
from schemas.ledger import Code, Ident, NamePart
from schemas.trading import AccountId, ClientId, Symbol

GOOD: list[tuple[Any, str]] = [
    (Ident, "tx-1"),
    (NamePart, "alice"),
    (Code, "cash"),
    (KeyId, "key_0123456789abcdef"),
    (DisputeId, "dsp_0123456789abcdef"),
    (EndpointId, "ep-1"),
    (Credential, "sk-abc"),
    (ClientId, "c1"),
    (Symbol, "llama-3.1-70b/2026-12-01T00Z/1h"),
    (AccountId, "alice"),
]


@pytest.mark.parametrize(("kind", "value"), GOOD)
def test_an_identifier_with_a_trailing_newline_is_refused(kind: Any, value: str) -> None:
    assert msgspec.json.decode(msgspec.json.encode(value), type=kind) == value
    for bad in (value + "\n", value + "\n\n", "\n" + value):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(msgspec.json.encode(bad), type=kind)
