"""Signature checks in the helper process: same answers as a check here, whatever happens
to the helper."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar import Litestar

from market.metrics import SIGNATURE_HELPER_RESTARTS
from market.signatures import SignatureChecker, serve
from ops.app import _pool_lifespan
from ops.config import Settings


def _cases(n: int) -> list[tuple[Ed25519PrivateKey, bytes, bytes, bool]]:
    """n (key, signature, message, valid) with every third one forged in some way."""
    keys = [Ed25519PrivateKey.generate() for _ in range(4)]
    cases = []
    for i in range(n):
        key = keys[i % len(keys)]
        message = f"{i}\nPOST\n/v1/orders\n{'ab' * 32}".encode()
        signature = key.sign(message)
        if i % 3 == 1:
            message += b"x"  # altered message
        elif i % 3 == 2 and i % 2 == 0:
            signature = keys[(i + 1) % len(keys)].sign(message)  # another key's signature
        cases.append((key, signature, message, i % 3 == 0 or (i % 3 == 2 and i % 2 == 1)))
    return cases


async def test_helper_answers_like_a_check_here() -> None:
    checker = SignatureChecker()
    await checker.start()
    try:
        assert checker.running
        cases = _cases(600)  # more than one frame's worth at once
        answers = await asyncio.gather(
            *(checker.verify(k.public_key(), s, m) for k, s, m, _ in cases)
        )
        assert answers == [valid for *_, valid in cases]
        assert sum(answers) == 300
    finally:
        await checker.close()
    assert not checker.running
    key, signature, message, _ = _cases(1)[0]
    assert await checker.verify(key.public_key(), signature, message)  # here, after close


async def test_checks_in_flight_when_the_helper_dies_are_answered_and_it_restarts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("market.signatures.RESTART_AFTER_S", 0.0)
    checker = SignatureChecker()
    await checker.start()
    restarts = SIGNATURE_HELPER_RESTARTS._value.get()
    try:
        process = checker._process
        assert process is not None
        cases = _cases(300)
        pending = [
            asyncio.ensure_future(checker.verify(k.public_key(), s, m)) for k, s, m, _ in cases
        ]
        await asyncio.sleep(0)  # queued and sent in one frame
        os.kill(process.pid, signal.SIGKILL)
        answers = await asyncio.gather(*pending)
        assert answers == [valid for *_, valid in cases]
        for _ in range(100):  # a new helper takes over
            if checker._process is not None and checker._process is not process:
                break
            await asyncio.sleep(0.05)
        assert checker._process is not None and checker._process is not process
        assert SIGNATURE_HELPER_RESTARTS._value.get() == restarts + 1  # /metrics counts it
        key, signature, message, _ = cases[0]
        assert await checker.verify(key.public_key(), signature, message)
        assert not await checker.verify(key.public_key(), signature, message + b"!")
    finally:
        await checker.close()


async def _wait_for(condition: Callable[[], bool], within: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, "not within the time allowed"
        await asyncio.sleep(0)  # every turn of the loop: a restart at once is quick


async def test_a_helper_that_dies_at_once_is_restarted_after_a_doubling_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("market.signatures.RESTART_AFTER_S", 1.0)
    monkeypatch.setattr("market.signatures.RESTART_DELAY_S", 0.2)
    checker = SignatureChecker()
    await checker.start()
    loop = asyncio.get_running_loop()
    key, signature, message, _ = _cases(1)[0]
    try:
        for delay in (0.2, 0.4):  # each dies within RESTART_AFTER_S of its start
            process = checker._process
            assert process is not None
            os.kill(process.pid, signal.SIGKILL)
            await _wait_for(lambda: not checker.running)
            stopped = loop.time()
            assert await checker.verify(key.public_key(), signature, message)  # here meanwhile
            await _wait_for(lambda: checker.running)
            assert loop.time() - stopped >= delay * 0.9
            assert checker._process is not process
        await asyncio.sleep(1.0)  # this one lives RESTART_AFTER_S: started again at once
        process = checker._process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        await _wait_for(lambda: checker._process not in (None, process), within=0.5)  # not 0.8
        assert checker._restart_delay == 0.2  # the doubling starts over
        assert await checker.verify(key.public_key(), signature, message)
    finally:
        await checker.close()


async def _answered_without(
    checker: SignatureChecker, process: asyncio.subprocess.Process, n: int
) -> None:
    """n checks get the right answers within 5 s although `process` fails them; it is
    given up (killed) and no longer the checker's helper."""
    cases = _cases(n)
    answers = await asyncio.wait_for(
        asyncio.gather(*(checker.verify(k.public_key(), s, m) for k, s, m, _ in cases)), 5
    )
    assert answers == [valid for *_, valid in cases]
    assert checker._process is not process
    await asyncio.wait_for(process.wait(), 5)  # killed


async def test_an_unanswered_frame_is_checked_here_after_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("market.signatures.FRAME_DEADLINE_S", 0.2)
    checker = SignatureChecker()
    await checker.start()
    process = checker._process
    assert process is not None
    try:
        os.kill(process.pid, signal.SIGSTOP)  # alive, but answers nothing
        await _answered_without(checker, process, 30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
            os.kill(process.pid, signal.SIGKILL)
        await checker.close()


@pytest.mark.parametrize("restart_after_s", [0.0, 10.0])  # restart at once / after a delay
async def test_close_while_the_helper_restarts_leaves_no_helper(
    monkeypatch: pytest.MonkeyPatch, restart_after_s: float
) -> None:
    monkeypatch.setattr("market.signatures.RESTART_AFTER_S", restart_after_s)
    monkeypatch.setattr("market.signatures.RESTART_DELAY_S", 0.1)
    started: list[asyncio.subprocess.Process] = []
    create = asyncio.create_subprocess_exec

    async def create_and_note(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        process = await create(*args, **kwargs)
        started.append(process)
        return process

    monkeypatch.setattr(asyncio, "create_subprocess_exec", create_and_note)
    checker = SignatureChecker()
    await checker.start()
    process = checker._process
    assert process is not None
    os.kill(process.pid, signal.SIGKILL)
    await _wait_for(lambda: not checker.running)  # its reader saw it stop
    await checker.close()
    await asyncio.sleep(0.3)  # past the restart delay
    assert not checker.running
    for helper in started:
        await asyncio.wait_for(helper.wait(), 1)


def _bad_helper(answer: str) -> tuple[str, ...]:
    """A helper that reads one frame and answers it with `answer` (a Python expression of
    the frame id and count giving (id, count) of the answer frame, all answers 1)."""
    script = f"""
import struct, sys
r, w = sys.stdin.buffer, sys.stdout.buffer
frame, count = struct.unpack("<II", r.read(8))
for _ in range(count):
    r.read(struct.unpack("<32s64sI", r.read(100))[2])
frame, count = {answer}
w.write(struct.pack("<II", frame, count) + bytes([1]) * count)
w.flush()
r.read()
"""
    return (sys.executable, "-c", script)


@pytest.mark.parametrize("answer", ["frame + 1, count", "frame, count + 1", "frame, count - 1"])
async def test_an_answer_frame_that_matches_no_frame_is_not_used(
    monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    monkeypatch.setattr("market.signatures.HELPER_COMMAND", _bad_helper(answer))
    checker = SignatureChecker()
    await checker.start()
    process = checker._process
    assert process is not None
    try:
        await _answered_without(checker, process, 12)
    finally:
        await checker.close()


async def test_the_helper_runs_in_its_own_session() -> None:
    checker = SignatureChecker()
    await checker.start()
    try:
        process = checker._process
        assert process is not None
        assert os.getpgid(process.pid) != os.getpgid(0)  # Ctrl-C to our group misses it
        assert os.getsid(process.pid) == process.pid
    finally:
        await checker.close()


def test_a_stray_print_in_the_helper_does_not_reach_the_answers() -> None:
    key = Ed25519PrivateKey.generate()
    message = b"hello"
    frame = struct.pack("<II", 3, 1)
    frame += struct.pack(
        "<32s64sI", key.public_key().public_bytes_raw(), key.sign(message), len(message)
    )
    frame += message
    script = """
import os, runpy
import nacl.bindings
check = nacl.bindings.crypto_sign_open  # what the helper's verify calls (ledger.ed25519)
def noisy(signed, raw):
    print("stray print")
    os.write(1, b"stray write\\n")
    return check(signed, raw)
nacl.bindings.crypto_sign_open = noisy
runpy.run_module("market.signatures", run_name="__main__")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], input=frame, capture_output=True, timeout=30, check=True
    )
    assert done.stdout == struct.pack("<II", 3, 1) + bytes([1])
    assert b"stray print" in done.stderr and b"stray write" in done.stderr


async def test_the_app_starts_and_closes_its_pool_when_the_helper_cannot_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def cannot_start(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        raise OSError("no processes left")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", cannot_start)

    class Pool:
        closed = False

        async def close(self) -> None:
            self.closed = True

    pool = Pool()

    async def factory(settings: Settings) -> asyncpg.Pool:
        return cast(asyncpg.Pool, pool)

    app = SimpleNamespace(state=SimpleNamespace())
    async with _pool_lifespan(Settings(), factory)(cast(Litestar, app)):
        checker = app.state.authenticator.checker
        assert not checker.running
        assert checker._restarting is not None  # it will be tried again later
        key, signature, message, _ = _cases(1)[0]
        assert await checker.verify(key.public_key(), signature, message)  # here
    assert pool.closed


def test_helper_loop_refuses_a_key_that_is_not_a_curve_point() -> None:
    key = Ed25519PrivateKey.generate()
    message = b"hello"
    good = key.public_key().public_bytes_raw()
    frame = struct.pack("<II", 7, 3)
    for raw, signature in (
        (good, key.sign(message)),
        (good, bytes(64)),
        (b"\xff" * 32, key.sign(message)),  # not a valid public key
    ):
        frame += struct.pack("<32s64sI", raw, signature, len(message)) + message
    out = io.BytesIO()
    serve(io.BytesIO(frame), out)
    assert out.getvalue() == struct.pack("<II", 7, 3) + bytes([1, 0, 0])


async def test_helper_is_strict_like_the_check_here() -> None:
    """The helper process answers the "Taming the many EdDSAs" vectors and the weak-key
    forgery exactly as `ledger.ed25519.verify` does (only vector 3 passes)."""
    from tests.ledger.test_ed25519 import EXPECTED, FORGED, IDENTITY, ZERO, _cases

    checks = [*_cases(), (IDENTITY, FORGED, b"any request"), (ZERO, FORGED, b"")]
    expected = [accept for accept, _ in EXPECTED] + [False, False]
    checker = SignatureChecker()
    await checker.start()
    try:
        assert checker.running
        answers = await asyncio.gather(*(checker.verify(k, s, m) for k, s, m in checks))
    finally:
        await checker.close()
    assert answers == expected
