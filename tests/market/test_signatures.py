"""Signature checks in the helper process: same answers as a check here, whatever happens
to the helper."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from market.signatures import SignatureChecker, serve


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
        key, signature, message, _ = cases[0]
        assert await checker.verify(key.public_key(), signature, message)
        assert not await checker.verify(key.public_key(), signature, message + b"!")
    finally:
        await checker.close()


async def test_a_helper_that_dies_at_once_is_not_restarted() -> None:
    checker = SignatureChecker()
    await checker.start()
    process = checker._process
    assert process is not None
    os.kill(process.pid, signal.SIGKILL)
    for _ in range(100):
        if not checker.running:
            break
        await asyncio.sleep(0.05)
    assert not checker.running  # stopped within RESTART_AFTER_S of its start: checks stay here
    key, signature, message, _ = _cases(1)[0]
    assert await checker.verify(key.public_key(), signature, message)
    await checker.close()


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
