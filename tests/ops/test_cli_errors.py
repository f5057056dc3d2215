"""A command that meets a bad key file, no exchange, no database or an exchange answering
what it should not answers one line, `tokex: error: CODE: MESSAGE` on stderr, and exit 1:
never a traceback."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from market.keys import private_key_pem
from ops.cli import build_parser, main

KEY_ID = "key_0123456789abcdef"


class _NotAnExchange(BaseHTTPRequestHandler):
    """200 with an HTML page on `/ok/...`, 502 with a multi-line HTML page elsewhere (a
    proxy in front of a stopped exchange), 200 with JSON of the wrong shape on `/shape/...`."""

    def do_GET(self) -> None:
        if self.path.startswith("/shape/"):
            status, body, kind = 200, b'{"unexpected": true}', "application/json"
        elif self.path.startswith("/ok/"):
            status, body, kind = 200, b"<html>\n<body>hello</body>\n</html>\n", "text/html"
        else:
            status, body, kind = 502, b"<html>\n<h1>502 Bad Gateway</h1>\n</html>\n", "text/html"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def not_an_exchange() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _NotAnExchange)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "k.pem"
    path.write_text(private_key_pem(Ed25519PrivateKey.generate()))
    return path


async def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    return code, capsys.readouterr().err


def _one_error_line(err: str, code: str) -> None:
    """Besides log lines (`2026-... INFO httpx: ...`), exactly the one error line."""
    lines = [line for line in err.splitlines() if not line[:2].isdigit()]
    assert len(lines) == 1 and lines[0].startswith(f"tokex: error: {code}:"), err


@pytest.mark.parametrize(
    ("path", "code"), [("/ok", "bad_answer"), ("/shape", "bad_answer"), ("", "http_502")]
)
async def test_an_exchange_answering_nonsense_is_one_line(
    not_an_exchange: str,
    key_file: Path,
    path: str,
    code: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = not_an_exchange + path
    status, err = await _run(
        capsys, "instruments", "list", "--url", url, "--key-id", KEY_ID, "--key-file",
        str(key_file),
    )  # fmt: skip
    assert status == 1
    _one_error_line(err, code)


async def test_a_url_with_a_port_out_of_range_is_one_line(
    key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = await _run(
        capsys, "orders", "list", "--url", "http://127.0.0.1:99999", "--key-id", KEY_ID,
        "--key-file", str(key_file),
    )  # fmt: skip
    assert status == 1
    _one_error_line(err, "invalid_url")


async def test_audit_export_from_url_without_its_key_file_or_exchange_is_one_line(
    tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit.tokex"
    base = ["audit", "export", "--out", str(out), "--key-id", KEY_ID]
    status, err = await _run(
        capsys, *base, "--from-url", "http://127.0.0.1:9", "--key-file", str(tmp_path / "no")
    )
    assert status == 1
    _one_error_line(err, "key_file_error")
    status, err = await _run(
        capsys, *base, "--from-url", "http://127.0.0.1:9", "--key-file", str(key_file)
    )
    assert status == 1
    _one_error_line(err, "exchange_unreachable")
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


DOWN = "postgresql://tokex:not-a-secret-pw@127.0.0.1:9/tokex"


@pytest.mark.parametrize(
    "argv",
    [("report", "fees"), ("audit", "export", "--out", "{tmp}/audit.tokex")],
    ids=" ".join,
)
async def test_a_database_that_is_down_is_one_line(
    argv: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", DOWN)
    words = [word.format(tmp=tmp_path) for word in argv]
    status, err = await _run(capsys, *words)
    assert status == 1
    _one_error_line(err, "database_unreachable")
    assert "not-a-secret-pw" not in err


async def test_an_out_file_that_cannot_be_written_is_one_line(
    tmp_path: Path,
    key_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", DOWN)  # the file is opened before the database
    nowhere = str(tmp_path / "no-such-dir" / "out")
    for argv in (
        ["report", "fees", "--out", nowhere],
        ["audit", "export", "--out", nowhere, "--from-url", "http://127.0.0.1:9",
         "--key-id", KEY_ID, "--key-file", str(key_file)],
    ):  # fmt: skip
        status, err = await _run(capsys, *argv)
        assert status == 1
        _one_error_line(err, "output_file_error")


@pytest.mark.parametrize(
    "argv",
    [("--workers", "-1"), ("--workers", "1.5"), ("--port", "99999"), ("--port", "-1"),
     ("--port", "8e3")],
    ids=" ".join,
)  # fmt: skip
def test_serve_refuses_a_negative_or_loose_number(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    """`--workers -1` used to start a sequencer with no gateway in front of it: a server
    that listens and never answers."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", *argv])
    assert exited.value.code == 2
    assert f"argument {argv[0]}:" in capsys.readouterr().err


def test_serve_takes_zero_workers_and_port_zero() -> None:
    args = build_parser().parse_args(["serve", "--workers", "0", "--port", "0"])
    assert (args.workers, args.port) == (0, 0)
