"""Request-signing primitives (`market.signing`): one definition for the server and the
client, and a client that does not pull in the server's framework or database driver."""

from __future__ import annotations

import json
import subprocess
import sys

import market.auth
import market.client
import market.signing


def test_server_and_client_share_one_definition() -> None:
    for name in ("HEADER_KEY", "HEADER_TIMESTAMP", "HEADER_SIGNATURE", "request_message"):
        assert getattr(market.auth, name) is getattr(market.signing, name)
    assert market.client.sign_request is market.signing.sign_request


def test_importing_the_client_imports_no_litestar_or_asyncpg() -> None:
    script = (
        "import json, sys\n"
        "import market.client\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    top_level = set(json.loads(done.stdout))
    assert "market" in top_level and "httpx" in top_level  # the import did happen
    assert not top_level & {"litestar", "asyncpg", "uvicorn"}, top_level


def test_signature_header_decoding() -> None:
    assert market.signing.decode_signature("A" * 86 + "==") == bytes(64)
    for bad in ("", "not base64!", "A" * 84 + "==", "A" * 88):
        assert market.signing.decode_signature(bad) is None, bad


def test_a_subscribe_signs_its_parameters_in_one_spelling() -> None:
    """The body a signed subscribe signs: what the README shows and api.js writes."""
    body = market.signing.subscribe_body
    assert body("orders", None, False) == (
        b'{"cancel_on_disconnect":false,"channel":"orders","instrument":null,"op":"subscribe"}'
    )
    assert body("orders", None, True) == (
        b'{"cancel_on_disconnect":true,"channel":"orders","instrument":null,"op":"subscribe"}'
    )
    assert body("book", "x/1h", False) != body("trades", "x/1h", False)
