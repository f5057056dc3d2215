"""Signed notes: Go golden vectors (golang.org/x/mod/sumdb/note), round trips, rejections."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.note import (
    KeyInvalid,
    NoteMalformed,
    NoteSignatureInvalid,
    NoteUnverified,
    Signature,
    Signer,
    Verifier,
    generate_key,
    is_valid_key_name,
    key_id,
    open_note,
    parse_note,
    sign_note,
)
from schemas.errors import DomainError

# From golang.org/x/mod/sumdb/note/note_test.go (TestSign, TestOpen).
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfq"
    "dngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnW"
    "Lox33WWd1RvMc+QQ=\n"
)
PETER_NOTE = TEXT + "\n" + PETER_SIG

peter_v = Verifier.parse(PETER_VKEY)
enoch_v = Verifier.parse(ENOCH_VKEY)
peter_s = Signer.parse(PETER_SKEY)


# --------------------------------------------------------------------------- golden


def test_go_keys_parse_and_reencode() -> None:
    assert peter_v.name == "PeterNeumann"
    assert peter_v.key_id == 0xC74F20A3
    assert peter_v.encode() == PETER_VKEY
    assert peter_s.encode() == PETER_SKEY
    assert peter_s.verifier() == peter_v
    assert key_id("PeterNeumann", peter_v.public_key) == 0xC74F20A3
    assert enoch_v.key_id == 0xAF0CFE78


def test_go_sign_golden() -> None:
    # Ed25519 is deterministic: the same key and text give Go's exact bytes.
    assert sign_note(TEXT, peter_s) == PETER_NOTE


def test_go_open_golden() -> None:
    text, sigs = open_note(PETER_NOTE.encode(), [peter_v])
    assert text == TEXT
    assert [(s.name, s.key_id) for s in sigs] == [("PeterNeumann", 0xC74F20A3)]
    # Two signatures, one key known: the other is ignored.
    both = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    _, sigs = open_note(both, [peter_v])
    assert [s.name for s in sigs] == ["PeterNeumann"]
    _, sigs = open_note(both, [enoch_v])
    assert [s.name for s in sigs] == ["EnochRoot"]
    _, sigs = open_note(both, [enoch_v, peter_v])
    assert [s.name for s in sigs] == ["PeterNeumann", "EnochRoot"]
    # Duplicates are reported once.
    _, sigs = open_note(TEXT + "\n" + PETER_SIG + PETER_SIG, [peter_v])
    assert len(sigs) == 1


def test_go_open_rejections() -> None:
    with pytest.raises(NoteUnverified):
        open_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG, [])
    bad = TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(NoteSignatureInvalid):
        open_note(bad, [peter_v])
    # ... but ignored when that key is not trusted (and another signature verifies).
    open_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:], [peter_v])
    with pytest.raises(NoteMalformed):
        open_note(TEXT + "\n" + PETER_SIG * 101, [peter_v])
    bad_msgs = [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n" + "\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFY"
        "C2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
    ]
    for msg in bad_msgs:
        with pytest.raises(NoteMalformed):
            open_note(msg, [peter_v])
    with pytest.raises(NoteMalformed):
        open_note(b"\xff" + PETER_NOTE.encode(), [peter_v])
    # A signature by an unknown key whose name matches but id does not is ignored.
    renamed = PETER_SIG.replace("PeterNeumann", "CarmenSandiego")
    with pytest.raises(NoteUnverified):
        open_note(TEXT + "\n" + renamed, [peter_v])


def test_key_string_manglings_rejected() -> None:
    # As Go's TestNewVerifier / TestNewSigner: every substring and every +1 byte mangling.
    for key, parse in ((PETER_VKEY, Verifier.parse), (PETER_SKEY, Signer.parse)):
        b = key.encode()
        for i in range(len(b) + 1):
            for j in range(i + 1, len(b) + 1):
                if i == 0 and j == len(b):
                    continue
                with pytest.raises(KeyInvalid):
                    parse(b[i:j].decode())
        for i in range(len(b)):
            m = bytearray(b)
            m[i] += 1
            with pytest.raises(KeyInvalid):
                parse(m.decode())
    with pytest.raises(KeyInvalid):  # wrong length key, adjusted key id
        Verifier.parse("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==")
    with pytest.raises(KeyInvalid):  # unknown algorithm, adjusted key id
        Verifier.parse("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


# --------------------------------------------------------------------------- round trips


def test_generate_round_trip() -> None:
    skey, vkey = generate_key("tokex.example/ledger")
    s = Signer.parse(skey)
    v = Verifier.parse(vkey)
    assert s.verifier() == v
    assert s.encode() == skey
    assert skey.startswith("PRIVATE+KEY+tokex.example/ledger+")
    assert "PRIVATE" not in repr(s) and skey.split("+", 4)[4] not in repr(s)
    note = sign_note("hello\n\nworld\n", s)
    text, sigs = open_note(note, [v])
    assert text == "hello\n\nworld\n"  # text may contain blank lines; the last one splits
    assert sigs[0].key_id == v.key_id


def test_multiple_signers_and_rotation() -> None:
    old, new = Signer.generate("tokex"), Signer.generate("tokex")
    assert old.key_id != new.key_id  # same name, different keys: distinct ids
    note = sign_note("rotate\n", [old, new])
    assert len(open_note(note, [old.verifier()])[1]) == 1
    assert len(open_note(note, [new.verifier()])[1]) == 1
    assert len(open_note(note, [old.verifier(), new.verifier()])[1]) == 2


def test_ambiguous_known_keys() -> None:
    v = peter_v
    twin = Verifier.__new__(Verifier)  # forge a different key with Peter's name and id
    twin.name, twin.key_id = v.name, v.key_id
    twin.public_key = enoch_v.public_key
    twin._key = enoch_v._key
    with pytest.raises(KeyInvalid):
        open_note(PETER_NOTE, [v, twin])
    open_note(PETER_NOTE, [v, Verifier.parse(PETER_VKEY)])  # the same key twice is fine


@settings(max_examples=40, deadline=None)
@given(
    lines=st.lists(
        st.text(
            alphabet=st.characters(
                exclude_categories=("Cs", "Cc"),
            ),
            max_size=40,
        ),
        min_size=1,
        max_size=5,
    ),
    flip=st.integers(min_value=0),
)
def test_tamper_property(lines: list[str], flip: int) -> None:
    text = "\n".join(lines) + "\n"
    note = sign_note(text, peter_s)
    assert open_note(note, [peter_v])[0] == text
    # Flip one bit anywhere in the encoded note: it must never verify to different text.
    raw = bytearray(note.encode())
    pos = flip % (len(raw) * 8)
    raw[pos // 8] ^= 1 << (pos % 8)
    try:
        got, _ = open_note(bytes(raw), [peter_v])
    except DomainError:
        return
    assert got == text  # only possible if the flip hit a redundant spot (none exist)
    raise AssertionError("tampered note verified")


def test_sign_rejections() -> None:
    with pytest.raises(NoteMalformed):
        sign_note("abc", peter_s)  # no final newline
    with pytest.raises(NoteMalformed):
        sign_note("a\tb\n", peter_s)  # control character
    with pytest.raises(NoteMalformed):
        sign_note("abc\n", [])
    with pytest.raises(NoteMalformed):
        sign_note("x" * 70000 + "\n", peter_s)
    with pytest.raises(NoteMalformed):
        open_note(("x" * 70000 + "\n").encode() + b"\n" + PETER_SIG.encode(), [peter_v])


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("PeterNeumann", True),
        ("tokex.example/ledger", True),
        ("", False),
        ("a b", False),
        ("a+b", False),
        ("a\u00a0b", False),
        ("a\u2003b", False),
        ("a\tb", False),
    ],
)
def test_key_names(name: str, ok: bool) -> None:
    assert is_valid_key_name(name) is ok
    if not ok:
        with pytest.raises(KeyInvalid):
            Signer(name, b"\x00" * 32)


def test_parse_note_syntax() -> None:
    text, sigs = parse_note(PETER_NOTE)
    assert text == TEXT
    assert sigs == [
        Signature(
            "PeterNeumann",
            0xC74F20A3,
            base64.b64decode(PETER_SIG.split()[2])[4:],
        )
    ]
    for bad_line in (
        "- PeterNeumann AAAAAAA=\n",  # ASCII dash
        "\u2014 PeterNeumann\n",  # no signature
        "\u2014 PeterNeumann AAAA\n",  # under 5 bytes
        "\u2014 PeterNeumann AAAAAAB=\n",  # non-canonical base64
        "\u2014 PeterNeumann AAAA AAAA\n",
        "\u2014  AAAAAAA=\n",  # empty name
    ):
        with pytest.raises(NoteMalformed):
            parse_note(TEXT + "\n" + bad_line)


def test_weak_verifier_keys_are_refused_and_forgeries_fail() -> None:
    """The identity key would verify R = identity, S = 0 for every note; it is no key here,
    and a forged signature line never verifies under a real one."""
    identity = bytes([1]) + bytes(31)
    for weak in (identity, bytes(32)):
        with pytest.raises(KeyInvalid, match="refused"):
            Verifier("tokex", weak)
    forged = base64.b64encode(peter_v.key_id.to_bytes(4, "big") + identity + bytes(32)).decode()
    note = TEXT + "\n" + f"\u2014 {peter_v.name} {forged}\n"
    with pytest.raises(NoteSignatureInvalid):
        open_note(note, [peter_v])
