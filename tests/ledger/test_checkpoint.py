"""Checkpoints: format, strict parsing, signing and verification."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.checkpoint import (
    Checkpoint,
    CheckpointMalformed,
    CheckpointOriginMismatch,
    sign_checkpoint,
    verify_checkpoint,
)
from ledger.merkle import EMPTY_ROOT, MerkleFrontier, leaf_hash
from ledger.note import NoteSignatureInvalid, NoteUnverified, Signer, open_note

ORIGIN = "tokex.example/ledger"
SIGNER = Signer(ORIGIN, bytes(range(32)))
ROOT = leaf_hash(b"x")


def test_spec_example_text_parses() -> None:
    # The example body from c2sp.org/tlog-checkpoint.
    text = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    cp = Checkpoint.parse(text)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert cp.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.time_ms is None and cp.extensions == ()
    assert cp.to_text() == text


def test_text_format() -> None:
    cp = Checkpoint(origin=ORIGIN, size=3, root_hash=ROOT, time_ms=1732849200123)
    b64 = base64.b64encode(ROOT).decode()
    assert cp.to_text() == f"{ORIGIN}\n3\n{b64}\ntime 1732849200123\n"
    empty = Checkpoint(origin=ORIGIN, size=0, root_hash=EMPTY_ROOT)
    assert empty.to_text().split("\n")[1] == "0"


def test_sign_and_verify() -> None:
    f = MerkleFrontier()
    f.extend(leaf_hash(bytes([i])) for i in range(10))
    cp = Checkpoint(origin=ORIGIN, size=f.size, root_hash=f.root(), time_ms=1_700_000_000_000)
    note = sign_checkpoint(cp, SIGNER)
    assert note.startswith(cp.to_text() + "\n\u2014 " + ORIGIN + " ")
    assert verify_checkpoint(note, [SIGNER.verifier()], ORIGIN) == cp
    assert verify_checkpoint(note.encode(), [SIGNER.verifier()], ORIGIN) == cp
    with pytest.raises(CheckpointOriginMismatch):
        verify_checkpoint(note, [SIGNER.verifier()], "other.example/log")
    with pytest.raises(NoteUnverified):
        verify_checkpoint(note, [Signer.generate(ORIGIN).verifier()], ORIGIN)
    # Change the size by one: the signature no longer matches.
    forged = note.replace("\n10\n", "\n11\n", 1)
    with pytest.raises(NoteSignatureInvalid):
        verify_checkpoint(forged, [SIGNER.verifier()], ORIGIN)


def test_extension_lines_round_trip() -> None:
    cp = Checkpoint(
        origin=ORIGIN, size=7, root_hash=ROOT, time_ms=5, extensions=("key-epoch 2", "x")
    )
    text = cp.to_text()
    assert text.endswith("time 5\nkey-epoch 2\nx\n")
    assert Checkpoint.parse(text) == cp
    note = sign_checkpoint(cp, SIGNER)
    assert open_note(note, [SIGNER.verifier()])[0] == text
    assert verify_checkpoint(note, [SIGNER.verifier()], ORIGIN) == cp


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, (1 << 64) - 1),
    root=st.binary(min_size=32, max_size=32),
    time_ms=st.none() | st.integers(0, (1 << 63) - 1),
    origin=st.text(
        alphabet=st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=30
    ),
)
def test_round_trip_property(size: int, root: bytes, time_ms: int | None, origin: str) -> None:
    cp = Checkpoint(origin=origin, size=size, root_hash=root, time_ms=time_ms)
    text = cp.to_text()
    assert Checkpoint.parse(text) == cp
    assert Checkpoint.parse(text).to_text() == text


B64 = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    "text",
    [
        f"{ORIGIN}\n1\n{B64}",  # no final newline
        f"{ORIGIN}\n1\n",  # missing root
        f"\n1\n{B64}\n",  # empty origin
        f"{ORIGIN}\n01\n{B64}\n",  # leading zero
        f"{ORIGIN}\n+1\n{B64}\n",
        f"{ORIGIN}\n-1\n{B64}\n",
        f"{ORIGIN}\n 1\n{B64}\n",
        f"{ORIGIN}\n1_0\n{B64}\n",
        f"{ORIGIN}\n\u0661\n{B64}\n",  # Arabic-Indic digit one: int() would accept it
        f"{ORIGIN}\n18446744073709551616\n{B64}\n",  # 2**64
        f"{ORIGIN}\n1\n{B64[:-1]}\n",  # bad base64
        f"{ORIGIN}\n1\n{base64.b64encode(ROOT[:31]).decode()}\n",  # 31 bytes
        f"{ORIGIN}\n1\n{B64}\n\n",  # empty extension line
        f"{ORIGIN}\n1\n{B64}\ntime 01\n",
        f"{ORIGIN}\n1\n{B64}\ntime \n",
        f"{ORIGIN}\n1\n{B64}\ntime 1.5\n",
        f"{ORIGIN}\n1\n{B64}\ntime 1\ntime 2\n",  # repeated
        f"{ORIGIN}\n1\n{B64}\nother\ntime 2\n",  # time not first
    ],
)
def test_malformed(text: str) -> None:
    with pytest.raises(CheckpointMalformed) as e:
        Checkpoint.parse(text)
    assert e.value.code == "checkpoint_malformed"


def test_malformed_signed_checkpoint_rejected_after_signature() -> None:
    from ledger.note import sign_note

    note = sign_note(f"{ORIGIN}\n01\n{B64}\n", SIGNER)
    with pytest.raises(CheckpointMalformed):
        verify_checkpoint(note, [SIGNER.verifier()], ORIGIN)


@pytest.mark.parametrize(
    "cp",
    [
        Checkpoint(origin="", size=1, root_hash=ROOT),
        Checkpoint(origin="a\nb", size=1, root_hash=ROOT),
        Checkpoint(origin=ORIGIN, size=-1, root_hash=ROOT),
        Checkpoint(origin=ORIGIN, size=1 << 64, root_hash=ROOT),
        Checkpoint(origin=ORIGIN, size=1, root_hash=ROOT[:31]),
        Checkpoint(origin=ORIGIN, size=1, root_hash=ROOT, time_ms=-1),
        Checkpoint(origin=ORIGIN, size=1, root_hash=ROOT, extensions=("",)),
        Checkpoint(origin=ORIGIN, size=1, root_hash=ROOT, extensions=("time 5",)),
    ],
)
def test_invalid_struct_not_serialized(cp: Checkpoint) -> None:
    with pytest.raises(CheckpointMalformed):
        cp.to_text()
