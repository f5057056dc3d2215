"""Accounts of the exchange and their signing keys: the wire forms.

An account has one role for life and one or more Ed25519 keys; each request is
signed by one key (see `market.auth`). Ids are random and prefixed: `acc_` and
`key_` followed by 16 lowercase hex digits (64 bits from `secrets`).

Public keys travel as base64 (standard alphabet, padded) of the raw 32 bytes.
Private keys travel only as unencrypted PKCS#8 PEM text, and only in the one
answer that created them (the CLI, or `TokexClient.create_account` generating a
pair on the client's side); the server's API never generates nor returns one.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec


class Role(StrEnum):
    OPERATOR = "operator"  # runs the exchange: accounts, instruments, deposits, windows
    PROVIDER = "provider"  # sells token capacity
    BUYER = "buyer"  # buys token capacity
    AUDITOR = "auditor"  # reads everything, changes nothing


AccountName = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
#: base64 of a raw 32-byte Ed25519 public key (44 characters with padding).
PublicKeyB64 = Annotated[str, msgspec.Meta(min_length=43, max_length=44)]


class CreateAccount(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/accounts` (operator only). `public_key` is required by the API;
    the CLI (`tokex accounts create`) may omit it and gets a generated key pair."""

    role: Role
    name: AccountName
    public_key: PublicKeyB64 | None = None


class AccountCreated(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    key_id: str
    role: Role
    name: str
    #: PKCS#8 PEM of a key pair generated for this account; None when the caller gave
    #: its own public key (always, through the API).
    private_key: str | None = None


class AccountView(msgspec.Struct, frozen=True, kw_only=True):
    """An account as its owner (or an operator or auditor) sees it."""

    account_id: str
    role: Role
    name: str
    created_at_ms: int  # Unix ms
    key_ids: list[str]


class AddKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/accounts/me/keys`: another request-signing key for the caller's account."""

    public_key: PublicKeyB64


class KeyView(msgspec.Struct, frozen=True, kw_only=True):
    """A request-signing key of an account (never its public or private key bytes)."""

    key_id: str
    account_id: str
    created_at_ms: int  # Unix ms
    revoked_at_ms: int | None = None  # Unix ms; None while the key is active
