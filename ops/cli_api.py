"""What the operator commands share: a signed client of a (possibly remote) exchange,
errors as one line, output as a table or JSON.

Every such command takes `--url` (env `TOKEX_URL`, default http://127.0.0.1:8000),
`--key-id` (env `TOKEX_KEY_ID`) and `--key-file` (env `TOKEX_KEY_FILE`: the account's
private key, as `tokex accounts create` writes it), and `--json`. It signs its requests
like `TokexClient` (it is one), so it works against any exchange it can reach. A refusal
prints `tokex: error: CODE: MESSAGE` (the server's code) and exits 1; an exchange it
cannot reach exits 1 with one line saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec

from market.client import TokexApiError, TokexClient
from schemas.errors import DomainError, ErrorKind

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"


class ApiCommandError(DomainError):
    """A command over the API failed: the server's refusal, or no server."""

    code = "api_error"
    kind = ErrorKind.INVALID


def add_client_options(parser: argparse.ArgumentParser) -> None:
    env = os.environ
    parser.add_argument(
        "--url", default=env.get("TOKEX_URL") or DEFAULT_URL,
        help=f"the exchange (env TOKEX_URL; default {DEFAULT_URL})",
    )  # fmt: skip
    parser.add_argument(
        "--key-id", default=env.get("TOKEX_KEY_ID"), help="the signing key's id (env TOKEX_KEY_ID)"
    )
    parser.add_argument(
        "--key-file", default=env.get("TOKEX_KEY_FILE"),
        help="its private key, PEM (env TOKEX_KEY_FILE)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def client_from_args(args: argparse.Namespace) -> TokexClient:
    """A signed client; for a command of public routes only (`public` set by its parser),
    an unsigned one when no key is given."""
    if getattr(args, "public", False) and not (args.key_id and args.key_file):
        _check_url(args.url)
        return TokexClient(args.url)
    return signed_client(args.url, args.key_id, args.key_file)


def signed_client(url: str, key_id: str | None, key_file: str | None) -> TokexClient:
    """A client of the exchange at `url` signing with `key_file`; ApiCommandError (one line)
    for a missing or unreadable key or a URL no request can be sent to."""
    if not key_id or not key_file:
        raise ApiCommandError(
            "a signed key is needed: --key-id and --key-file (or TOKEX_KEY_ID, TOKEX_KEY_FILE)",
            code="missing_key",
        )
    _check_url(url)
    try:
        return TokexClient.from_key_file(url, key_id, Path(key_file))
    except OSError as exc:
        raise ApiCommandError(
            f"cannot read key file {key_file}: {exc.strerror}", code="key_file_error"
        ) from None
    except ValueError as exc:
        raise ApiCommandError(f"{key_file}: {exc}", code="key_file_error") from None


def _check_url(url: str) -> None:
    try:
        port = httpx.URL(url).port
    except httpx.InvalidURL as exc:
        raise ApiCommandError(f"not a URL: {url}: {exc}", code="invalid_url") from None
    if port is not None and not 0 < port < 65536:
        raise ApiCommandError(f"not a URL: {url}: port {port} is out of range", code="invalid_url")


def _one_line(text: str, limit: int = 300) -> str:
    """`text` (e.g. a proxy's HTML error page) on one line, at most `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


@contextmanager
def api_errors(url: str) -> Iterator[None]:
    """A refusal, no exchange at `url`, or an answer that is not tokex's: ApiCommandError."""
    try:
        yield
    except TokexApiError as exc:
        raise ApiCommandError(_one_line(exc.message), code=exc.code) from None
    except httpx.TransportError as exc:
        raise ApiCommandError(
            f"cannot reach the exchange at {url}: {exc or type(exc).__name__}",
            code="exchange_unreachable",
        ) from None
    except msgspec.DecodeError as exc:  # ValidationError too: JSON of the wrong shape
        raise ApiCommandError(
            f"the answer from {url} is not a tokex answer (is it the exchange?): "
            f"{_one_line(str(exc))}",
            code="bad_answer",
        ) from None


def run(args: argparse.Namespace, call: Callable[[TokexClient], Awaitable[T]]) -> T:
    """Run `call` with a signed client; a refusal or no exchange becomes ApiCommandError."""

    async def go() -> T:
        async with client_from_args(args) as client:
            return await call(client)

    with api_errors(args.url):
        return asyncio.run(go())


def emit_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def emit_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain table: columns padded to their widest cell, numbers aligned right."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(_numeric(r[i]) for r in rows if r[i] is not None) and bool(rows)
        for i in range(len(headers))
    ]
    for row in cells:
        parts = [
            cell.rjust(w) if right else cell.ljust(w)
            for cell, w, right in zip(row, widths, numeric, strict=True)
        ]
        print("  ".join(parts).rstrip())
    if not rows:
        print("(none)")


def _numeric(value: object) -> bool:
    return isinstance(value, int) or (isinstance(value, str) and value[:1] in "$€£¥-0123456789")
