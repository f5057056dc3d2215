"""Settings from the environment: what an operator sets is what the exchange uses."""

from __future__ import annotations

from pathlib import Path

from ledger.keys import load_or_create_signer, write_key_file
from ledger.note import Signer
from ops.config import Settings


def test_the_signing_key_file_is_set_by_its_variable(tmp_path: Path) -> None:
    """`TOKEX_SIGNING_KEY_FILE` names the checkpoint signing key (kept apart from the
    data dir): the exchange signs with that key, and creates none in the data dir."""
    key_file = tmp_path / "keys" / "exchange.key"
    key_file.parent.mkdir()
    signer = Signer.generate("tokex.local/ledger")
    write_key_file(key_file, signer)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    settings = Settings.from_env({"TOKEX_SIGNING_KEY_FILE": str(key_file)}, data_dir=str(data_dir))
    assert settings.signing_key_file == str(key_file)
    used = load_or_create_signer(settings.signing_key_file, data_dir, settings.exchange_name)
    assert used.verifier().encode() == signer.verifier().encode()
    assert list(data_dir.iterdir()) == []
    assert Settings.from_env({}, data_dir=str(data_dir)).signing_key_file is None
