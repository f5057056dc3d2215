"""Ed25519 checks of signed requests, in a helper process beside the event loop.

Every signed request costs one Ed25519 verify, 60-90 µs of OpenSSL. The server's event
loop also runs the sequencer, so at a few thousand requests a second the checks were a
quarter of the loop's time (`python -m ops.bench.api`: 3,000 orders/s with them, 4,000
without). A thread does not help: the loop rarely lets go of the GIL, so the thread's
answers wait. A helper process does the checks on the machine's other core: the loop
packs the checks that arrive together into one frame on the helper's stdin (a few µs
each) and reads the answers back in one frame.

Frames (little-endian). To the helper: frame id (u32), count (u32), then per check the
public key (32 bytes), the signature (64 bytes), the message length (u32) and the message.
Back: frame id (u32), count (u32), one byte per check (1 valid, 0 not), in order.

The answer does not depend on the helper being there: before `start`, after `close`, and
for the checks in flight when the helper dies, the check runs here, in this process
(the helper is then started again for the next checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import sys
from typing import BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")  # frame id, number of checks
_CHECK = struct.Struct("<32s64sI")  # public key, signature, message length
#: Most checks in one frame: a frame is answered as a whole, so keep them short.
MAX_FRAME_CHECKS = 256
#: A helper that stops sooner than this after its start is not started again (it would
#: only stop again); the checks then stay in this process.
RESTART_AFTER_S = 10.0
#: Public keys the helper keeps parsed (one per active signing key).
MAX_CACHED_KEYS = 100_000


def verify_here(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """The check itself, in this process."""
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


_Check = tuple[Ed25519PublicKey, bytes, bytes, "asyncio.Future[bool]"]


class SignatureChecker:
    """Checks Ed25519 signatures in a helper process; `verify` is awaited on the loop
    that called `start` (the app's)."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._queued: list[_Check] = []
        self._in_flight: dict[int, list[_Check]] = {}
        self._next_frame = 0
        self._flush_scheduled = False
        self._closing = False
        self._started_at = 0.0

    @property
    def running(self) -> bool:
        return self._process is not None

    async def start(self) -> None:
        """Start the helper process (its checks begin with the next `verify`)."""
        self._closing = False
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "market.signatures",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._process = process
        self._started_at = asyncio.get_running_loop().time()
        self._reader = asyncio.create_task(self._read(process), name="signature-answers")

    async def close(self) -> None:
        """Stop the helper; what it still had is checked here."""
        self._closing = True
        process, self._process = self._process, None
        if process is None:
            return
        self._fail_over()
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def verify(self, key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
        """Whether `signature` (64 bytes) is `key`'s Ed25519 signature of `message`."""
        if self._process is None or len(signature) != 64:
            return verify_here(key, signature, message)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._queued.append((key, signature, message, future))
        if len(self._queued) >= MAX_FRAME_CHECKS:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

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
            parts.append(_CHECK.pack(key.public_bytes_raw(), signature, len(message)))
            parts.append(message)
        self._in_flight[frame] = checks
        process.stdin.write(b"".join(parts))

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        stdout = process.stdout
        assert stdout is not None
        try:
            while True:
                frame, count = _HEADER.unpack(await stdout.readexactly(_HEADER.size))
                answers = await stdout.readexactly(count)
                checks = self._in_flight.pop(frame, [])
                for (_, _, _, future), answer in zip(checks, answers, strict=True):
                    if not future.done():  # the request may be gone (client went away)
                        future.set_result(answer == 1)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, KeyError) as exc:
            if self._closing or self._process is not process:
                return
            self._process = None
            self._fail_over()
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            if asyncio.get_running_loop().time() - self._started_at < RESTART_AFTER_S:
                log.error("signature helper stopped right after its start (%s); checking here", exc)
                return
            log.warning("signature helper stopped (%s); checking here and restarting it", exc)
            try:
                await self.start()
            except OSError:
                log.exception("signature helper could not be restarted; checking here")

    def _fail_over(self) -> None:
        """Answer every check the helper has not answered, here."""
        in_flight, self._in_flight = self._in_flight, {}
        for checks in in_flight.values():
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
    keys: dict[bytes, Ed25519PublicKey | None] = {}
    while True:
        header = requests.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        frame, count = _HEADER.unpack(header)
        results = bytearray(count)
        for i in range(count):
            raw_key, signature, length = _CHECK.unpack(requests.read(_CHECK.size))
            message = requests.read(length)
            if raw_key not in keys:
                if len(keys) >= MAX_CACHED_KEYS:
                    keys.clear()
                try:
                    keys[raw_key] = Ed25519PublicKey.from_public_bytes(raw_key)
                except ValueError:
                    keys[raw_key] = None
            key = keys[raw_key]
            if key is not None and verify_here(key, signature, message):
                results[i] = 1
        answers.write(_HEADER.pack(frame, count) + bytes(results))
        answers.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
