"""Ed25519 checks of signed requests, in a helper process beside the event loop.

Every signed request costs one strict Ed25519 verify (`ledger.ed25519.verify`, the same
function wherever tokex checks a signature: ~45 µs of libsodium; it was 60-90 µs of
OpenSSL when this helper was written). The server's event loop also runs the sequencer,
so at a few thousand requests a second the checks were a quarter of the loop's time
(`python -m ops.bench.api`: 3,000 orders/s with them, 4,000 without). A thread does not
help: the loop rarely lets go of the GIL, so the thread's answers wait. A helper process
does the checks on the machine's other core: the loop packs the checks that arrive
together into one frame on the helper's stdin (a few µs each) and reads the answers back
in one frame.

Frames (little-endian). To the helper: frame id (u32), count (u32), then per check the
public key (32 bytes), the signature (64 bytes), the message length (u32) and the message.
Back: frame id (u32), count (u32), one byte per check (1 valid, 0 not), in order.

The answer does not depend on the helper being there: before `start`, after `close`, and
for the checks in flight when the helper is lost, the check runs here, in this process.
The helper is lost when it dies (EOF on its stdout), when a frame goes unanswered for
FRAME_DEADLINE_S (it is stopped or starved: it is killed), or when an answer frame does
not match a frame in flight (id or count: it is killed; such answers are never used). It
is then started again, at once if it had lived RESTART_AFTER_S, else after a delay that
doubles from RESTART_DELAY_S up to MAX_RESTART_DELAY_S; checks run here meanwhile.

The helper runs in its own session, so a Ctrl-C to the server's process group does not
reach it; it exits when its stdin closes (the server closed it, or died). It writes its
answers on a copy of fd 1 and points fd 1 and `sys.stdout` at stderr, so a stray print
cannot corrupt the answer frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import sys
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger import ed25519
from market.metrics import SIGNATURE_HELPER_RESTARTS

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")  # frame id, number of checks
_CHECK = struct.Struct("<32s64sI")  # public key, signature, message length
#: Most checks in one frame: a frame is answered as a whole, so keep them short.
MAX_FRAME_CHECKS = 256
#: A frame not answered within this many seconds: the helper is killed and its checks are
#: done here.
FRAME_DEADLINE_S = 1.0
#: A helper that lived this long is started again at once when it stops; one that stopped
#: sooner is started again after a delay, doubled each time (from RESTART_DELAY_S to at
#: most MAX_RESTART_DELAY_S) until one lives this long.
RESTART_AFTER_S = 10.0
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 60.0
#: How the helper is started.
HELPER_COMMAND = (sys.executable, "-m", "market.signatures")


def raw_key(key: Ed25519PublicKey | bytes) -> bytes:
    """The raw 32 bytes of a public key."""
    return key if isinstance(key, bytes) else key.public_bytes_raw()


def verify_here(key: Ed25519PublicKey | bytes, signature: bytes, message: bytes) -> bool:
    """The check itself, in this process (strict: `ledger.ed25519.verify`)."""
    return ed25519.verify(raw_key(key), signature, message)


_Check = tuple[bytes, bytes, bytes, "asyncio.Future[bool]"]  # raw key, signature, message


class SignatureChecker:
    """Checks Ed25519 signatures in a helper process; `verify` is awaited on the loop
    that called `start` (the app's)."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._queued: list[_Check] = []
        #: frame id -> (loop time it was sent, its checks), oldest first
        self._in_flight: dict[int, tuple[float, list[_Check]]] = {}
        self._next_frame = 0
        self._flush_scheduled = False
        self._closed = False
        self._started_at = 0.0
        self._restart_delay = RESTART_DELAY_S
        #: The loop of the helper's pipes (set when it starts): the one `verify` runs on.
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._process is not None

    async def start(self) -> None:
        """Start the helper process (its checks begin with the next `verify`); nothing if
        it runs already. If it cannot start, checks are done here and it is tried again
        later, like a helper that died."""
        self._closed = False
        if self._process is not None or (self._restarting and not self._restarting.done()):
            return
        try:
            await self._spawn()
        except OSError as exc:
            delay = self._next_delay()
            log.warning("signature helper did not start (%s); checking here, retry in %gs",
                        exc, delay)  # fmt: skip
            self._restarting = asyncio.create_task(self._restart(delay), name="signature-restart")

    async def close(self) -> None:
        """Stop the helper (and any restart of it); what it still had is checked here."""
        self._closed = True
        for task in (self._reader, self._restarting):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])  # a cancel of close() itself still propagates
        self._reader = self._restarting = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        process, self._process = self._process, None
        self._fail_over()
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()  # the helper exits at the end of its input
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        except asyncio.CancelledError:
            # A hard shutdown (a second Ctrl-C) cancels the app's clean-up: stop the
            # helper rather than wait for it (the child watcher reaps it), and go on
            # being cancelled.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise

    async def verify(self, key: Ed25519PublicKey | bytes, signature: bytes, message: bytes) -> bool:
        """Whether `signature` (64 bytes) is `key`'s strict Ed25519 signature of `message`
        (`key`: raw 32 bytes, or a `cryptography` public key)."""
        public_key = raw_key(key)
        loop = self._loop
        if self._process is None or loop is None or len(signature) != 64 or len(public_key) != 32:
            return verify_here(public_key, signature, message)
        future: asyncio.Future[bool] = loop.create_future()
        self._queued.append((public_key, signature, message, future))
        if len(self._queued) >= MAX_FRAME_CHECKS:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    async def _spawn(self) -> None:
        process = await asyncio.create_subprocess_exec(
            *HELPER_COMMAND,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C to the server's group is not for it
        )
        if self._closed or self._process is not None:  # closed (or started) meanwhile
            process.kill()
            await process.wait()
            return
        self._process = process
        self._loop = asyncio.get_running_loop()
        self._started_at = self._loop.time()
        self._reader = asyncio.create_task(self._read(process), name="signature-answers")

    async def _restart(self, delay: float) -> None:
        while True:
            await asyncio.sleep(delay)
            try:
                await self._spawn()
                if self._process is not None:
                    SIGNATURE_HELPER_RESTARTS.inc()
                return
            except OSError:
                log.exception("signature helper could not be restarted; checking here")
            delay = self._next_delay()

    def _next_delay(self) -> float:
        delay = self._restart_delay
        self._restart_delay = min(delay * 2, MAX_RESTART_DELAY_S)
        return delay

    def _flush(self) -> None:
        """Send what was queued in this turn of the loop as one frame."""
        self._flush_scheduled = False
        checks, self._queued = self._queued, []
        if not checks:
            return
        process = self._process
        if process is None or process.stdin is None or process.stdin.is_closing():
            self._answer_here(checks)
            return
        frame = self._next_frame
        self._next_frame = (frame + 1) & 0xFFFFFFFF
        parts = [_HEADER.pack(frame, len(checks))]
        for key, signature, message, _ in checks:
            parts.append(_CHECK.pack(key, signature, len(message)))
            parts.append(message)
        loop = self._loop or asyncio.get_running_loop()
        self._in_flight[frame] = (loop.time(), checks)
        process.stdin.write(b"".join(parts))
        if self._watchdog is None:
            self._watchdog = loop.call_later(FRAME_DEADLINE_S, self._check_deadline)

    def _check_deadline(self) -> None:
        """Kill a helper whose oldest frame in flight is overdue (its reader then answers
        the checks here); else look again when the oldest one is due."""
        self._watchdog = None
        process = self._process
        if process is None or not self._in_flight:
            return
        sent, _ = next(iter(self._in_flight.values()))
        loop = asyncio.get_running_loop()
        due = sent + FRAME_DEADLINE_S - loop.time()
        if due > 0:
            self._watchdog = loop.call_later(due, self._check_deadline)
            return
        log.warning("signature helper did not answer within %ss; killing it", FRAME_DEADLINE_S)
        with contextlib.suppress(ProcessLookupError):
            process.kill()

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        stdout = process.stdout
        assert stdout is not None
        try:
            while True:
                frame, count = _HEADER.unpack(await stdout.readexactly(_HEADER.size))
                if frame not in self._in_flight or len(self._in_flight[frame][1]) != count:
                    self._lose(process, f"answered frame {frame} of {count}, not one sent")
                    return  # its answers are not read, let alone used
                answers = await stdout.readexactly(count)
                _, checks = self._in_flight.pop(frame)
                for (_, _, _, future), answer in zip(checks, answers, strict=True):
                    if not future.done():  # the request may be gone (client went away)
                        future.set_result(answer == 1)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self._lose(process, f"stopped: {exc!r}")

    def _lose(self, process: asyncio.subprocess.Process, why: str) -> None:
        """Give the helper up: answer its checks here, kill it, start another one later."""
        if self._process is not process:
            return
        self._process = None
        self._fail_over()
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        if self._closed:
            return
        if asyncio.get_running_loop().time() - self._started_at >= RESTART_AFTER_S:
            self._restart_delay = RESTART_DELAY_S
            delay = 0.0
        else:
            delay = self._next_delay()
        log.warning("signature helper %s; checking here, restarting it in %gs", why, delay)
        self._restarting = asyncio.create_task(self._restart(delay), name="signature-restart")

    def _fail_over(self) -> None:
        """Answer every check the helper has not answered, here."""
        in_flight, self._in_flight = self._in_flight, {}
        for _, checks in in_flight.values():
            self._answer_here(checks)
        queued, self._queued = self._queued, []
        self._answer_here(queued)

    @staticmethod
    def _answer_here(checks: list[_Check]) -> None:
        for key, signature, message, future in checks:
            if not future.done():
                future.set_result(verify_here(key, signature, message))


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """The helper's loop: read frames of checks, write frames of answers, until EOF."""
    while True:
        header = requests.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        frame, count = _HEADER.unpack(header)
        results = bytearray(count)
        for i in range(count):
            key, signature, length = _CHECK.unpack(requests.read(_CHECK.size))
            message = requests.read(length)
            if ed25519.verify(key, signature, message):
                results[i] = 1
        answers.write(_HEADER.pack(frame, count) + bytes(results))
        answers.flush()


if __name__ == "__main__":
    # The answers get their own copy of fd 1; fd 1 and sys.stdout become stderr, so a
    # stray print (ours or a library's) cannot land in the answer frames.
    with os.fdopen(os.dup(1), "wb") as answers:
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        serve(sys.stdin.buffer, answers)
