"""Settings from the environment: what an operator sets is what the exchange uses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.keys import load_or_create_signer, write_key_file
from ledger.note import Signer
from ops.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("TOKEX_SETTLE_WAIT_MS", "-1", "Expected `int` >= 0"),
        ("TOKEX_MAX_CONNECTIONS", "abc", "Expected `int`, got `str`"),
        ("TOKEX_CLIENT_SHARE_PERCENT", "0", "Expected `int` >= 1"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(
    variable: str, value: str, said: str, tmp_path: Path
) -> None:
    """`tokex serve` with a setting it cannot start with: one line naming the variable and
    its value, exit 1 (it was a msgspec traceback)."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {variable: value}
    done = subprocess.run(
        [sys.executable, "-m", "ops", "serve", "--data-dir", str(tmp_path / "d"), "--port", "1"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    line = f"tokex: error: invalid_setting: {variable}={value!r}: {said}"
    assert done.stderr.strip() == line
