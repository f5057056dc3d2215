"""C2SP transparency-log checkpoints (https://c2sp.org/tlog-checkpoint) as signed notes.

Checkpoint text (each line ends in "\\n")::

    <origin>                      e.g. tokex.example/ledger
    <tree size>                   ASCII decimal, no leading zeros ("0" for the empty tree)
    <root hash>                   standard padded base64 of the 32-byte RFC 9162 root
    time <unix milliseconds>      tokex extension line (optional; first extension if present)
    <other extension lines>       opaque, non-empty, preserved in order

The tokex ``time`` line is the signing time in integer milliseconds since the Unix epoch
(UTC), ASCII decimal without leading zeros, e.g. ``time 1732849200123``. Integers, not an
ISO-8601 string, so there is exactly one encoding of each instant and no time-zone parsing.

The note is then signed per `ledger.note` (tokex names the key after the origin, as the
spec recommends, but verification does not require it). Parsing is strict: one text has
one meaning, so `Checkpoint.parse(cp.to_text())` returns ``cp`` and
`Checkpoint.parse(t).to_text() == t` for every accepted ``t``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable

import msgspec

from ledger.note import Signer, Verifier, b64decode_strict, open_note, sign_note
from schemas.errors import DomainError, ErrorKind

__all__ = [
    "Checkpoint",
    "CheckpointMalformed",
    "CheckpointOriginMismatch",
    "sign_checkpoint",
    "verify_checkpoint",
]

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_MAX_SIZE = (1 << 64) - 1
_MAX_TIME_MS = (1 << 63) - 1
_TIME_PREFIX = "time "


class CheckpointMalformed(DomainError):
    """The checkpoint text does not follow the tlog-checkpoint format."""

    code = "checkpoint_malformed"
    kind = ErrorKind.INVALID


class CheckpointOriginMismatch(DomainError):
    """A validly signed checkpoint, but for another log than the one expected."""

    code = "checkpoint_origin_mismatch"
    kind = ErrorKind.INVALID


def _parse_decimal(s: str, limit: int, what: str) -> int:
    if not _DECIMAL.fullmatch(s):
        raise CheckpointMalformed(f"{what} is not a canonical decimal number")
    value = int(s)
    if value > limit:
        raise CheckpointMalformed(f"{what} out of range")
    return value


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A signed tree head: the log ``origin`` had ``size`` leaves with root ``root_hash``."""

    origin: str
    size: int
    root_hash: bytes
    time_ms: int | None = None
    extensions: tuple[str, ...] = ()

    def validate(self) -> None:
        """Raise `CheckpointMalformed` unless `to_text` would produce a parseable text."""
        if not self.origin or "\n" in self.origin:
            raise CheckpointMalformed("origin must be one non-empty line")
        if not 0 <= self.size <= _MAX_SIZE:
            raise CheckpointMalformed("tree size out of range")
        if len(self.root_hash) != 32:
            raise CheckpointMalformed("root hash must be 32 bytes")
        if self.time_ms is not None and not 0 <= self.time_ms <= _MAX_TIME_MS:
            raise CheckpointMalformed("time out of range")
        for line in self.extensions:
            if not line or "\n" in line:
                raise CheckpointMalformed("extension lines must be non-empty single lines")
            if line.startswith(_TIME_PREFIX):
                raise CheckpointMalformed("the time line goes in time_ms")

    def to_text(self) -> str:
        """The note text (ending in a newline) to be signed."""
        self.validate()
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode()]
        if self.time_ms is not None:
            lines.append(f"{_TIME_PREFIX}{self.time_ms}")
        lines.extend(self.extensions)
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint note text (the part above the signatures)."""
        if not text.endswith("\n"):
            raise CheckpointMalformed("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointMalformed("checkpoint needs origin, size and root hash lines")
        origin, size_s, root_s, *ext = lines
        if not origin:
            raise CheckpointMalformed("empty origin")
        size = _parse_decimal(size_s, _MAX_SIZE, "tree size")
        try:
            root = b64decode_strict(root_s)
        except ValueError:
            raise CheckpointMalformed("root hash is not canonical base64") from None
        if len(root) != 32:
            raise CheckpointMalformed("root hash must be 32 bytes")
        time_ms: int | None = None
        if ext and ext[0].startswith(_TIME_PREFIX):
            time_ms = _parse_decimal(ext[0][len(_TIME_PREFIX) :], _MAX_TIME_MS, "time")
            ext = ext[1:]
        for line in ext:
            if not line:
                raise CheckpointMalformed("empty extension line")
            if line.startswith(_TIME_PREFIX):
                raise CheckpointMalformed("time line repeated or not the first extension")
        return cls(origin=origin, size=size, root_hash=root, time_ms=time_ms, extensions=tuple(ext))


def sign_checkpoint(cp: Checkpoint, signer: Signer | Iterable[Signer]) -> str:
    """The signed checkpoint note."""
    return sign_note(cp.to_text(), signer)


def verify_checkpoint(
    note: bytes | str, verifiers: Iterable[Verifier], expected_origin: str
) -> Checkpoint:
    """Open a checkpoint note signed by a known key and check its origin.

    Raises the `ledger.note` errors for signature problems, `CheckpointMalformed`, or
    `CheckpointOriginMismatch`. The text is parsed only after a known signature verified.
    """
    text, _sigs = open_note(note, verifiers)
    cp = Checkpoint.parse(text)
    if cp.origin != expected_origin:
        raise CheckpointOriginMismatch(
            f"checkpoint is for origin {cp.origin!r}, expected {expected_origin!r}"
        )
    return cp
