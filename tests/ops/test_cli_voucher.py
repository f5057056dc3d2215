"""`tokex voucher sign`: offline, from the buyer's key file, the body of POST /v1/vouchers."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import ed25519
from market.keys import private_key_pem
from market.vouchers import decode_voucher_signature, voucher_message
from ops.cli import main
from schemas.disputes import SignedVoucher

ARGS = [
    "--key-id", "key_00000000000000aa", "--buyer", "acc_00000000000000b1",
    "--provider", "acc_00000000000000c1", "--instrument", "m/2030-01-01T00Z/1h",
]  # fmt: skip


def test_it_prints_a_voucher_the_buyers_key_signed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "buyer.pem"
    key_file.write_text(private_key_pem(key))
    code = main(["voucher", "sign", "--key-file", str(key_file), *ARGS,
                 "--tokens", "12000", "--version", "3"])  # fmt: skip
    assert code == 0
    signed = msgspec.json.decode(capsys.readouterr().out, type=SignedVoucher)
    assert (signed.voucher.tokens, signed.voucher.version) == (12_000, 3)
    signature = decode_voucher_signature(signed.signature)
    assert signature is not None
    public = key.public_key().public_bytes_raw()
    assert ed25519.verify(public, signature, voucher_message(signed.voucher))


def test_a_bad_voucher_or_key_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "buyer.pem"
    key_file.write_text(private_key_pem(Ed25519PrivateKey.generate()))
    assert main(["voucher", "sign", "--key-file", str(key_file), *ARGS,
                 "--tokens", "0", "--version", "1"]) == 1  # fmt: skip
    assert "invalid_voucher" in capsys.readouterr().err
    missing = str(tmp_path / "nope.pem")
    assert main(["voucher", "sign", "--key-file", missing, *ARGS,
                 "--tokens", "1", "--version", "1"]) == 1  # fmt: skip
    assert "cannot read" in capsys.readouterr().err
