"""The exchange's checkpoint signing key: key files, first-start creation, rotation.

Key file
--------
One line, the `ledger.note` signer string ``PRIVATE+KEY+<name>+<id>+<base64>``, in a file
of mode 0600 (a key file readable by group or others is refused: `KeyFileInsecure`). If no
key file is configured (`Settings.signing_key_file`), the exchange uses
``<data-dir>/ledger-signing.key``, creating it on first start. The key is named after the
exchange's origin (`Settings.exchange_name`), as C2SP recommends.

Rotation
--------
A new key is announced in the ledger itself, by a transaction with no legs (an
announcement, see `ledger.rules`) of code ``key_rotation`` whose metadata is::

    key              the new verifier key string
    valid_from_size  the tree size from which checkpoints are signed by the new key: the
                     announcement's own index + 1, so the first checkpoint that contains
                     the announcement is already signed by the new key
    signature        base64 Ed25519 signature, by the key valid before, of
                     `rotation_message(origin, key, valid_from_size)`

A verifier that trusts only the first key therefore learns each later key from an entry
that the key it already trusts has signed (`check_rotation`), and the entry itself is
covered by the checkpoints like any other. `MerkleLog.write` refuses a batch holding a
``key_rotation`` transaction that does not check out, so every one in the log is valid.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from ledger.note import KeyInvalid, Signer, Verifier, b64decode_strict
from schemas.errors import DomainError, ErrorKind
from schemas.ledger import CommittedTransaction, Transaction

if TYPE_CHECKING:
    from ledger.log import MerkleLog
    from ledger.writer import Ledger

__all__ = [
    "DEFAULT_KEY_FILE",
    "KEY_ROTATION_CODE",
    "KeyFileError",
    "KeyFileInsecure",
    "KeyRotationInvalid",
    "KeyRotationStale",
    "check_rotation",
    "load_or_create_signer",
    "load_signer",
    "rotate",
    "rotation_message",
    "rotation_metadata",
    "write_key_file",
]

KEY_ROTATION_CODE = "key_rotation"
DEFAULT_KEY_FILE = "ledger-signing.key"
_ROTATION_FIELDS = frozenset({"key", "valid_from_size", "signature"})


class KeyFileError(DomainError):
    """The signing key file is missing, unreadable or does not hold a signer key."""

    code = "key_file_invalid"
    kind = ErrorKind.INVALID


class KeyFileInsecure(KeyFileError):
    """The signing key file can be read by group or others (must be mode 0600)."""

    code = "key_file_insecure"


class KeyRotationInvalid(DomainError):
    """A key_rotation announcement is malformed or not signed by the key valid before it."""

    code = "key_rotation_invalid"
    kind = ErrorKind.INVALID


class KeyRotationStale(KeyRotationInvalid):
    """The announcement's valid_from_size is not its index + 1 (the log moved meanwhile)."""

    code = "key_rotation_stale"


# --------------------------------------------------------------------------- key files


def write_key_file(path: Path | str, signer: Signer) -> None:
    """Create ``path`` with mode 0600 holding the signer key; never overwrites a file."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{p} already exists; not overwriting a key") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {p}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(signer.encode() + "\n")


def load_signer(path: Path | str) -> Signer:
    """Read a signer key file; refuse one readable by anyone but its owner."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyFileError(f"no key file {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read key file {p}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileInsecure(f"key file {p} has mode {stat.S_IMODE(mode):04o}; chmod 600 it")
    try:
        return Signer.parse(text.strip())
    except KeyInvalid as exc:
        raise KeyFileError(f"key file {p}: {exc.message}") from None


def load_or_create_signer(key_file: Path | str | None, data_dir: Path, name: str) -> Signer:
    """The configured key file's signer, or ``<data_dir>/ledger-signing.key`` (created with
    a new key named ``name`` on first start)."""
    if key_file is not None:
        return load_signer(key_file)
    path = data_dir / DEFAULT_KEY_FILE
    if path.exists():
        return load_signer(path)
    data_dir.mkdir(parents=True, exist_ok=True)
    signer = Signer.generate(name)
    write_key_file(path, signer)
    return signer


# --------------------------------------------------------------------------- rotation


def rotation_message(origin: str, new_key: str, valid_from_size: int) -> bytes:
    """What the old key signs: bound to the log (origin), the new key and where it starts."""
    return f"tokex key rotation\n{origin}\n{new_key}\n{valid_from_size}\n".encode()


def rotation_metadata(
    old: Signer, new: Verifier, origin: str, valid_from_size: int
) -> dict[str, str]:
    key = new.encode()
    sig = old.sign(rotation_message(origin, key, valid_from_size))
    return {
        "key": key,
        "valid_from_size": str(valid_from_size),
        "signature": base64.b64encode(sig).decode(),
    }


def check_rotation(tx: CommittedTransaction, current: Verifier, origin: str) -> Verifier:
    """The new key announced by ``tx``, if ``current`` signed the announcement; else raise."""
    where = f"key rotation at index {tx.index}"
    if tx.entries or tx.holds:
        raise KeyRotationInvalid(f"{where}: an announcement moves nothing")
    if set(tx.metadata) != _ROTATION_FIELDS:
        raise KeyRotationInvalid(f"{where}: metadata must be exactly {sorted(_ROTATION_FIELDS)}")
    key, size_s, sig_s = (tx.metadata[k] for k in ("key", "valid_from_size", "signature"))
    if not size_s.isdigit() or str(int(size_s)) != size_s:
        raise KeyRotationInvalid(f"{where}: valid_from_size is not a decimal number")
    if int(size_s) != tx.index + 1:
        raise KeyRotationStale(
            f"{where}: valid_from_size {size_s} is not the announcement's index + 1"
        )
    try:
        new = Verifier.parse(key)
        sig = b64decode_strict(sig_s)
    except (KeyInvalid, ValueError):
        raise KeyRotationInvalid(f"{where}: malformed key or signature") from None
    if new == current:
        raise KeyRotationInvalid(f"{where}: the new key is the current key")
    if not current.verify(rotation_message(origin, key, int(size_s)), sig):
        raise KeyRotationInvalid(f"{where}: not signed by the current key {current.encode()}")
    return new


async def rotate(
    ledger: Ledger, log: MerkleLog, new_signer: Signer, time_ms: int, *, attempts: int = 5
) -> int:
    """Announce ``new_signer`` in the ledger; checkpoints after it are signed by it.

    Returns the index of the announcement. The caller must keep the new key (write its key
    file and configure it) before restarting: the log then refuses to start with the old
    one. Retries if another batch commits between choosing valid_from_size and committing.
    """
    log.stage(new_signer)
    new = new_signer.verifier()
    for _ in range(attempts):
        size = ledger.size + 1
        tx = Transaction(
            id=f"key-rotation:{new.key_id:08x}:{size}",
            code=KEY_ROTATION_CODE,
            time=time_ms,
            metadata=rotation_metadata(log.signer, new, log.origin, size),
        )
        try:
            [result] = await ledger.apply_batch([tx])
        except KeyRotationStale:
            continue
        if not result.committed or result.index is None:
            raise KeyRotationInvalid(f"key rotation not committed: {result.message}")
        return result.index
    raise KeyRotationInvalid("key rotation kept racing other batches; try again")
