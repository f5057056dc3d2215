"""Strict Ed25519 (`ledger.ed25519`): the published edge-case vectors, the weak-key forgery,
and the public-key door."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import ed25519

VECTORS = Path(__file__).parent.parent / "vectors" / "ed25519-speccheck" / "cases.json"
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493

#: Per case of "Taming the many EdDSAs": (accepted by our strict verify, why). The strict
#: policy is libsodium's: S < L, neither A nor R of small order, A canonical, and R equal
#: byte for byte to the encoding of [S]B - [k]A (cofactorless).
EXPECTED: list[tuple[bool, str]] = [
    (False, "0: A and R of small order, S = 0: valid for any equation, forged for any message"),
    (False, "1: A of small order (R mixed): refused for the small-order A"),
    (False, "2: R of small order (A mixed): refused for the small-order R"),
    (True, "3: A and R mixed-order, 0 < S < L, valid cofactored and cofactorless: accepted"),
    (False, "4: valid only under the cofactored equation: we verify cofactorless"),
    (False, "5: valid cofactored only with a pre-reduced 8h: cofactorless refuses it"),
    (False, "6: S > L (S + L of a valid signature): S must be canonical, S < L"),
    (False, "7: S >> L (top bits set): S must be canonical, S < L"),
    (False, "8: non-canonical R (small order), hash over reduced R: R must match byte for byte"),
    (False, "9: non-canonical R (small order), hash over R as sent: R must match byte for byte"),
    (False, "10: non-canonical A (small order), hash over reduced A: A must be canonical"),
    (False, "11: non-canonical A (small order), hash over A as sent: A must be canonical"),
]


def _cases() -> list[tuple[bytes, bytes, bytes]]:
    raw = json.loads(VECTORS.read_text())
    return [
        (bytes.fromhex(c["pub_key"]), bytes.fromhex(c["signature"]), bytes.fromhex(c["message"]))
        for c in raw
    ]


def test_the_vectors_are_the_published_twelve() -> None:
    assert len(_cases()) == len(EXPECTED) == 12


@pytest.mark.parametrize("number", range(12))
def test_speccheck_vector(number: int) -> None:
    public_key, signature, message = _cases()[number]
    accept, why = EXPECTED[number]
    assert ed25519.verify(public_key, signature, message) is accept, why


def test_no_vector_key_passes_the_public_key_door() -> None:
    """Every key of the vectors is of small order, has a small-order component or is
    non-canonical, except those of cases 6 and 7 (a good key, bad signatures)."""
    for number, (public_key, _, _) in enumerate(_cases()):
        if number in (6, 7):
            assert ed25519.check_public_key(public_key) == public_key
        else:
            with pytest.raises(ed25519.WeakKey):
                ed25519.check_public_key(public_key)


IDENTITY = bytes([1]) + bytes(31)  # AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
ZERO = bytes(32)  # a point of order 4
FORGED = bytes([1]) + bytes(31) + bytes(32)  # R = identity, S = 0


@pytest.mark.parametrize("public_key", [IDENTITY, ZERO], ids=["identity", "all-zero"])
def test_the_weak_key_forgery_is_refused(public_key: bytes) -> None:
    """R = identity and S = 0 satisfy [S]B = R + [k]A whenever [k]A is the identity: for
    every message under the identity key (OpenSSL's verify accepts them), for the messages
    with 4 | k under the all-zero key (order 4). Refused here for every message."""
    for i in range(64):
        assert not ed25519.verify(public_key, FORGED, f"{i}\nGET\n/v1/balances\n".encode())
    with pytest.raises(ed25519.WeakKey):
        ed25519.check_public_key(public_key)


def _small_order_encodings() -> list[bytes]:
    """The 8 points of small order in every encoding: sign bit 0 or 1, and the
    non-canonical y + p where it fits in 255 bits (y = 0 and y = 1)."""
    ys = [0, 1, P - 1]
    ys += [
        int.from_bytes(bytes.fromhex(h), "little")
        for h in (
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        )
    ]
    ys += [P, P + 1]
    return [(y | sign << 255).to_bytes(32, "little") for y in ys for sign in (0, 1)]


def test_every_small_order_encoding_is_refused_as_a_key_and_as_r() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    message = b"m"
    good = key.sign(message)
    for encoding in _small_order_encodings():
        with pytest.raises((ed25519.WeakKey, ed25519.MalformedKey)):
            ed25519.check_public_key(encoding)
        assert not ed25519.verify(encoding, FORGED, message)
        assert not ed25519.verify(public, encoding + good[32:], message)
    assert ed25519.verify(public, good, message)


def test_non_canonical_and_off_curve_keys_are_malformed() -> None:
    key = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    y = int.from_bytes(key, "little") & ((1 << 255) - 1)
    for high in (P + 2, 2**255 - 1):  # y >= p: never canonical
        with pytest.raises(ed25519.MalformedKey, match="canonical"):
            ed25519.check_public_key(high.to_bytes(32, "little"))
    off = next(  # some y with no x on the curve
        v for v in range(2, 100) if not ed25519._on_curve(v, False)
    ).to_bytes(32, "little")
    with pytest.raises(ed25519.MalformedKey, match="curve"):
        ed25519.check_public_key(off)
    with pytest.raises(ed25519.MalformedKey, match="32 bytes"):
        ed25519.check_public_key(key[:31])
    assert y < P


def test_a_key_with_a_small_order_component_is_weak() -> None:
    """Case 3's key: a prime-order point plus a point of order 8. It verifies case 3 (see
    above), but no private key makes it, so the door refuses it."""
    public_key = _cases()[3][0]
    with pytest.raises(ed25519.WeakKey, match="small-order component"):
        ed25519.check_public_key(public_key)


def test_malleated_s_is_refused() -> None:
    """S + L verifies under a lax equation check; S must be < L."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    signature = key.sign(b"pay 10")
    s = int.from_bytes(signature[32:], "little")
    malleated = signature[:32] + (s + L).to_bytes(32, "little")
    assert ed25519.verify(public, signature, b"pay 10")
    assert not ed25519.verify(public, malleated, b"pay 10")


@settings(max_examples=50, deadline=None)
@given(message=st.binary(max_size=200), seed=st.binary(min_size=32, max_size=32))
def test_honest_keys_and_signatures_pass(message: bytes, seed: bytes) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public = key.public_key().public_bytes_raw()
    assert ed25519.check_public_key(public) == public
    signature = key.sign(message)
    assert ed25519.verify(public, signature, message)
    assert not ed25519.verify(public, signature, message + b"\x00")
    assert not ed25519.verify(public, signature[:63], message)
    assert not ed25519.verify(public[:31], signature, message)
