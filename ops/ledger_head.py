"""The exchange never serves a database whose ledger is behind what it already signed.

Every batch the sequencer commits extends the Merkle log and signs a checkpoint for it
(`ledger.log`). A database that went back in time (a restore from an older backup, a
replica that lagged, a data directory copied back) holds a shorter log, or another one:
serving it would drop acknowledged entries and sign a fork of the exchange's own log,
which no consistency proof can reconcile with the checkpoints already published.

So the exchange keeps the head it reached: in memory (the old sequencer's `MerkleLog`,
before a reopen after an outage) and in the data directory (`CHECKPOINT_FILE`, the last
signed checkpoint, written by `HeadKeeper` at most `SAVE_INTERVAL_S` after each change
and at shutdown), and before it opens on a database it checks that the database's log
has at least that many leaves and the same root at that size (`check_not_behind`).
If not: `LedgerRegressed`, 503 `ledger_regressed` everywhere until the right database is
back (`ops.supervisor`; the writer's own reload after a failed commit, when no outage
was seen, refuses such a database too: `ledger.log.MerkleLog.reload`).
`TOKEX_ACCEPT_LEDGER_REGRESSION=1` skips the check, for a deliberate restore (the saved
head is then replaced by the restored database's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import asyncpg
import msgspec

from ledger.checkpoint import Checkpoint, CheckpointMalformed
from ledger.log import LedgerRegressed, MerkleLog, log_size, regression
from ledger.note import NoteMalformed, parse_note

log = logging.getLogger(__name__)

#: The last checkpoint the exchange signed, in its data directory.
CHECKPOINT_FILE = "ledger-head.checkpoint"
#: How long after a checkpoint is signed it is at most saved (a crash loses at most this).
SAVE_INTERVAL_S = 0.5


class LogHead(msgspec.Struct, frozen=True):
    """A size of the log and its root there."""

    size: int
    root: bytes


def head_of(merkle_log: MerkleLog | None) -> LogHead | None:
    """What `merkle_log` signed and saw committed (not what a batch cut by the outage
    staged: that may never have reached the database)."""
    head = None if merkle_log is None else merkle_log.committed_head
    if head is None or head.size == 0:
        return None
    return LogHead(head.size, head.root)


def saved_head(data_path: Path) -> LogHead | None:
    """The head in the saved checkpoint; None if there is none (or it is unreadable: said)."""
    path = data_path / CHECKPOINT_FILE
    try:
        text, _sigs = parse_note(path.read_text())
        checkpoint = Checkpoint.parse(text)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeError, NoteMalformed, CheckpointMalformed) as exc:
        log.warning("the saved ledger checkpoint %s is unreadable, ignored: %s", path, exc)
        return None
    return LogHead(checkpoint.size, checkpoint.root_hash)


def save_checkpoint(data_path: Path, note: str) -> None:
    """Write `note` as the saved checkpoint (whole or not at all: a rename)."""
    path = data_path / CHECKPOINT_FILE
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(note)
    os.replace(temporary, path)


async def check_not_behind(url: str, head: LogHead | None) -> None:
    """`LedgerRegressed` unless the database's log extends `head` (see the module docstring)."""
    if head is None:
        return
    conn = await asyncpg.connect(url)
    try:
        why = await regression(conn, await log_size(conn), head.size, head.root)
        if why is not None:
            raise LedgerRegressed(
                f"{why} (restore the right database, or set"
                " TOKEX_ACCEPT_LEDGER_REGRESSION=1 for a deliberate restore)"
            )
    finally:
        await conn.close()


class HeadKeeper:
    """Saves the last signed checkpoint of the current `MerkleLog` in the data directory."""

    def __init__(self, data_path: Path) -> None:
        self._data_path = data_path
        self._saved: str | None = None
        self.merkle_log: MerkleLog | None = None
        self._task: asyncio.Task[None] | None = None

    def save_now(self) -> None:
        note = None if self.merkle_log is None else self.merkle_log.committed_head.note
        if note is None or note == self._saved:
            return
        try:
            save_checkpoint(self._data_path, note)
        except OSError as exc:
            log.warning("could not save the ledger checkpoint: %s", exc)
            return
        self._saved = note

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL_S)
            self.save_now()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-head-keeper")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.save_now()
