"""C2SP signed notes with Ed25519 keys (https://c2sp.org/signed-note), compatible with
Go's ``golang.org/x/mod/sumdb/note``.

Pure: no I/O; keys are passed in as strings or objects.

Note format
-----------
::

    <text: one or more lines, each ending in "\\n">
    <blank line>
    — <key name> <base64(4-byte big-endian key id || 64-byte Ed25519 signature)>\\n
    ... (one line per signature)

The signature is over the text, including its final newline but not the blank line. The
text is separated from the signatures by the *last* blank line. The whole note must be
UTF-8 with no ASCII control characters other than newline.

Key names are non-empty and contain no Unicode whitespace and no ``+``.

Key id = first 4 bytes (big-endian uint32) of ``SHA-256(name || 0x0A || 0x01 || pubkey)``,
0x01 being the Ed25519 signature type.

Key strings (as Go's note package writes them)
----------------------------------------------
- verifier (public): ``<name>+<8 hex digits key id>+<base64(0x01 || 32-byte public key)>``
- signer (secret): ``PRIVATE+KEY+<name>+<8 hex digits key id>+<base64(0x01 || 32-byte seed)>``

Verification rules (`open_note`)
--------------------------------
- Malformed notes (bad UTF-8, control characters, no blank line, bad signature lines,
  more than `MAX_SIGNATURES` signature lines, longer than `MAX_NOTE_BYTES`) raise
  `NoteMalformed`.
- A signature whose (name, key id) is not among the known verifiers is ignored.
- A signature by a known key that fails to verify raises `NoteSignatureInvalid` (the spec's
  SHOULD; we treat it as MUST: a bad signature from our own key means tampering).
- If no known key signed the note, `NoteUnverified` is raised.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import ed25519
from schemas.errors import DomainError, ErrorKind

__all__ = [
    "ALG_ED25519",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "KeyInvalid",
    "NoteError",
    "NoteMalformed",
    "NoteSignatureInvalid",
    "NoteUnverified",
    "Signature",
    "Signer",
    "Verifier",
    "b64decode_strict",
    "generate_key",
    "is_valid_key_name",
    "key_id",
    "open_note",
    "parse_note",
    "sign_note",
]

ALG_ED25519 = 0x01
MAX_SIGNATURES = 100  # Go's limit; the spec requires accepting at least 16
MAX_NOTE_BYTES = 1 << 16  # a tokex note is a checkpoint or key announcement: small
SIG_PREFIX = "\u2014 "  # em dash, space


class NoteError(DomainError):
    """Base of signed-note errors."""

    code = "note_error"
    kind = ErrorKind.INVALID


class NoteMalformed(NoteError):
    """The note (or text to sign) does not follow the signed-note format."""

    code = "note_malformed"


class NoteUnverified(NoteError):
    """No signature by a known key: the note's text must not be trusted."""

    code = "note_unverified"


class NoteSignatureInvalid(NoteError):
    """A signature by a known key does not verify: the note was altered or forged."""

    code = "note_signature_invalid"


class KeyInvalid(DomainError):
    """A signer or verifier key string, or a key name, is malformed or inconsistent."""

    code = "key_invalid"
    kind = ErrorKind.INVALID


class Signature(NamedTuple):
    """One signature line: key name, key id, raw signature (without the key id)."""

    name: str
    key_id: int
    signature: bytes


# --------------------------------------------------------------------------- helpers


def b64decode_strict(s: str) -> bytes:
    """Standard padded base64, rejecting anything but the canonical encoding.

    (Non-canonical encodings, e.g. with non-zero padding bits, would let the same bytes be
    written several ways.)
    """
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError("invalid base64") from None
    if base64.b64encode(raw).decode("ascii") != s:
        raise ValueError("non-canonical base64")
    return raw


def is_valid_key_name(name: str) -> bool:
    """Non-empty, no Unicode whitespace, no '+', no control characters."""
    if not name or "+" in name:
        return False
    return all(not c.isspace() and c >= " " for c in name)


def _check_name(name: str) -> None:
    if not is_valid_key_name(name):
        raise KeyInvalid(f"invalid key name {name!r}")


def key_id(name: str, public_key: bytes) -> int:
    """C2SP key id of an Ed25519 key: SHA-256(name || 0x0A || 0x01 || key)[:4], big-endian."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _parse_key_id(hex_id: str) -> int:
    if len(hex_id) != 8 or any(c not in "0123456789abcdefABCDEF" for c in hex_id):
        raise KeyInvalid("key id must be 8 hex digits")
    return int(hex_id, 16)


# --------------------------------------------------------------------------- keys


class Verifier:
    """A named Ed25519 public key that can check note signatures (strictly, see
    `ledger.ed25519`); a malformed or weak (small-order) key is refused: `KeyInvalid`."""

    __slots__ = ("_key", "key_id", "name", "public_key")

    def __init__(self, name: str, public_key: bytes) -> None:
        _check_name(name)
        if len(public_key) != 32:
            raise KeyInvalid("Ed25519 public key must be 32 bytes")
        try:
            ed25519.check_public_key(public_key)
        except (ed25519.MalformedKey, ed25519.WeakKey) as exc:
            raise KeyInvalid(f"Ed25519 public key refused: {exc}") from None
        self.name = name
        self.public_key = bytes(public_key)
        self.key_id = key_id(name, self.public_key)
        self._key = self.public_key  # what `verify` checks against

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        """Parse ``<name>+<hex id>+<base64(0x01 || pubkey)>``; the id must match the key."""
        parts = vkey.split("+", 2)  # the base64 key may itself contain "+"
        if len(parts) != 3:
            raise KeyInvalid("verifier key must be <name>+<id>+<key>")
        name, hex_id, b64 = parts
        _check_name(name)
        kid = _parse_key_id(hex_id)
        try:
            raw = b64decode_strict(b64)
        except ValueError:
            raise KeyInvalid("verifier key: bad base64") from None
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise KeyInvalid("verifier key: not an Ed25519 key")
        v = cls(name, raw[1:])
        if v.key_id != kid:
            raise KeyInvalid("verifier key: key id does not match name and key")
        return v

    def encode(self) -> str:
        b64 = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{b64}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        return ed25519.verify(self._key, signature, message)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Verifier):
            return NotImplemented
        return self.name == other.name and self.public_key == other.public_key

    def __hash__(self) -> int:
        return hash((self.name, self.public_key))

    def __repr__(self) -> str:
        return f"Verifier({self.encode()!r})"


class Signer:
    """A named Ed25519 private key. Its `encode()` is a secret: never log it."""

    __slots__ = ("_key", "_verifier", "key_id", "name", "public_key")

    def __init__(self, name: str, seed: bytes) -> None:
        _check_name(name)
        if len(seed) != 32:
            raise KeyInvalid("Ed25519 seed must be 32 bytes")
        self.name = name
        self._key = Ed25519PrivateKey.from_private_bytes(bytes(seed))
        self.public_key = self._key.public_key().public_bytes_raw()
        self.key_id = key_id(name, self.public_key)
        self._verifier: Verifier | None = None

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(name, Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def parse(cls, skey: str) -> Signer:
        """Parse ``PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>``."""
        parts = skey.split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise KeyInvalid("signer key must be PRIVATE+KEY+<name>+<id>+<key>")
        name, hex_id, b64 = parts[2:]
        _check_name(name)
        kid = _parse_key_id(hex_id)
        try:
            raw = b64decode_strict(b64)
        except ValueError:
            raise KeyInvalid("signer key: bad base64") from None
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise KeyInvalid("signer key: not an Ed25519 key")
        s = cls(name, raw[1:])
        if s.key_id != kid:
            raise KeyInvalid("signer key: key id does not match name and key")
        return s

    def encode(self) -> str:
        """The secret key string (``PRIVATE+KEY+...``)."""
        seed = self._key.private_bytes_raw()
        b64 = base64.b64encode(bytes([ALG_ED25519]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{b64}"

    def verifier(self) -> Verifier:
        """Its public key, made once (the Merkle log names it in every checkpoint row:
        checking the point anew each batch was ~3% of the server's CPU)."""
        if self._verifier is None:
            self._verifier = Verifier(self.name, self.public_key)
        return self._verifier

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __repr__(self) -> str:  # never the seed
        return f"Signer({self.name}+{self.key_id:08x})"


def generate_key(name: str) -> tuple[str, str]:
    """New Ed25519 key pair: (signer key string, verifier key string)."""
    s = Signer.generate(name)
    return s.encode(), s.verifier().encode()


# --------------------------------------------------------------------------- notes


_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")


def _check_chars(s: str) -> None:
    if _CONTROL.search(s):
        raise NoteMalformed("control character in note")


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteMalformed("note text must end with a newline")
    if len(text.encode()) > MAX_NOTE_BYTES:
        raise NoteMalformed("note text too long")
    _check_chars(text)


def sign_note(text: str, signers: Signer | Iterable[Signer]) -> str:
    """Sign ``text`` (which must end in a newline) with one or more keys; return the note."""
    _check_text(text)
    if isinstance(signers, Signer):
        signers = [signers]
    msg = text.encode()
    lines = []
    for s in signers:
        sig = s.key_id.to_bytes(4, "big") + s.sign(msg)
        lines.append(f"{SIG_PREFIX}{s.name} {base64.b64encode(sig).decode()}\n")
    if not lines:
        raise NoteMalformed("a note needs at least one signature")
    return text + "\n" + "".join(lines)


def _index_verifiers(known: Iterable[Verifier]) -> dict[tuple[str, int], Verifier]:
    index: dict[tuple[str, int], Verifier] = {}
    for v in known:
        k = (v.name, v.key_id)
        prev = index.get(k)
        if prev is not None and prev.public_key != v.public_key:
            # Two keys with the same name and id: the trust configuration is broken.
            raise KeyInvalid(f"ambiguous key {v.name}+{v.key_id:08x}")
        index[k] = v
    return index


def parse_note(note: bytes | str) -> tuple[str, list[Signature]]:
    """Split a note into text and (unverified!) signatures, checking only the syntax."""
    if isinstance(note, bytes):
        if len(note) > MAX_NOTE_BYTES:
            raise NoteMalformed("note too long")
        try:
            msg = note.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteMalformed("note is not valid UTF-8") from None
    else:
        msg = note
        try:
            size = len(msg.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates
            raise NoteMalformed("note is not valid Unicode") from None
        if size > MAX_NOTE_BYTES:
            raise NoteMalformed("note too long")
    _check_chars(msg)
    split = msg.rfind("\n\n")
    if split < 0:
        raise NoteMalformed("note has no signature block")
    text, block = msg[: split + 1], msg[split + 2 :]
    if not block or not block.endswith("\n"):
        raise NoteMalformed("note has no signatures or does not end in a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteMalformed("too many signatures")
    sigs: list[Signature] = []
    for line in lines:
        if not line.startswith(SIG_PREFIX):
            raise NoteMalformed("signature line must start with an em dash and a space")
        name, sep, b64 = line[len(SIG_PREFIX) :].partition(" ")
        if not sep or not is_valid_key_name(name):
            raise NoteMalformed("bad key name in signature line")
        try:
            raw = b64decode_strict(b64)
        except ValueError:
            raise NoteMalformed("bad base64 in signature line") from None
        if len(raw) < 5:
            raise NoteMalformed("signature too short")
        sigs.append(Signature(name, int.from_bytes(raw[:4], "big"), raw[4:]))
    return text, sigs


def open_note(note: bytes | str, known: Iterable[Verifier]) -> tuple[str, list[Signature]]:
    """Check a signed note; return its text and the signatures verified by known keys.

    Signatures by unknown keys are ignored; duplicates of a verified signature are
    reported once. Raises `NoteMalformed`, `NoteSignatureInvalid` or `NoteUnverified`.
    """
    text, sigs = parse_note(note)
    index = _index_verifiers(known)
    msg = text.encode()
    verified: list[Signature] = []
    seen: set[Signature] = set()
    for sig in sigs:
        v = index.get((sig.name, sig.key_id))
        if v is None:
            continue
        if not v.verify(msg, sig.signature):
            raise NoteSignatureInvalid(f"invalid signature for key {sig.name}+{sig.key_id:08x}")
        if sig not in seen:
            seen.add(sig)
            verified.append(sig)
    if not verified:
        raise NoteUnverified("note has no signature by a known key")
    return text, verified
