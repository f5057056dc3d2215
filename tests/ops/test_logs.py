"""Structured logs: JSON lines, a request id from the access line to the sequencer's batch
and commit lines, and no secret in any line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from typing import Any

import httpx
import msgspec

from market.request_context import accept_request_id
from ops.logs import REDACTED, JsonFormatter, JsonLinesHandler, configure, direct_handler
from schemas.market import Side
from tests.support.market import order, small_market
from tests.support.server import ServerProcess


def lines_of(proc: ServerProcess) -> list[dict[str, Any]]:
    """Every JSON line of the server's log (stdout and stderr)."""
    out = []
    for raw in proc.log_path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            out.append(json.loads(raw))
    return out


def wait_for_lines(proc: ServerProcess, needle: str, count: int) -> list[dict[str, Any]]:
    """The lines mentioning `needle` (as grep finds them), once there are `count`."""
    deadline = time.monotonic() + 5
    while True:
        found = [line for line in lines_of(proc) if needle in json.dumps(line)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


async def test_one_request_id_from_access_line_to_batch_and_commit(
    db_url: str, server_process: ServerProcess
) -> None:
    market = await small_market(db_url, server_process.base_url)
    try:
        request = market.buyer.build_request(
            "POST", "/v1/orders", json=order("traced", Side.BUY, 1_000, 500)
        )
        request.headers["X-Request-Id"] = "trace-me-42"
        signature = request.headers["X-Tokex-Signature"]
        response = await market.buyer._http.send(request)
        assert response.status_code == 201
        assert response.headers["x-request-id"] == "trace-me-42"
        order_id = response.json()["order_id"]
        # no id given: one is made and echoed; a hostile one is replaced
        made = httpx.get(server_process.base_url + "/health")
        assert made.headers["x-request-id"].startswith("req_")
        hostile = httpx.get(
            server_process.base_url + "/health", headers={"X-Request-Id": 'a" b {"x":1}'}
        )
        assert hostile.headers["x-request-id"].startswith("req_")
        # a secret the server hands out once: never in its log
        secret = (await market.buyer.request("POST", "/v1/inference-keys", json={}))["secret"]
        assert secret.startswith("tkx_")
    finally:
        await market.aclose()

    path = wait_for_lines(server_process, "trace-me-42", 3)
    by_event = {line["event"]: line for line in path}
    assert sorted(by_event) == ["access", "batch", "commit"], path
    access = by_event["access"]
    assert access["request_id"] == "trace-me-42"
    assert (access["method"], access["path"], access["status"]) == ("POST", "/v1/orders", 201)
    assert access["route"] == "/v1/orders" and access["key_id"] == market.buyer.key_id
    assert by_event["batch"]["batch"] == by_event["commit"]["batch"]
    assert "trace-me-42" in by_event["batch"]["request_ids"]
    assert by_event["commit"]["commit_ms"] >= 0 and by_event["commit"]["ledger_size"] > 0
    assert order_id > 0
    log_text = server_process.log_path.read_text()
    for leaked in (signature, secret, "PRIVATE KEY"):
        assert leaked not in log_text
    assert all(
        line["level"] in {"debug", "info", "warning", "error"} for line in lines_of(server_process)
    )


def test_formatter_writes_json_and_redacts_secrets() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(
            "key %s leaked, auth Bearer abc.def",
            "tkx_0123456789abcdef",
            extra={
                "signature": "c2lnbmF0dXJl", "credential": "sk-upstream", "request_id": "r1",
                "headers": {"Authorization": "Bearer x", "accept": "json"}, "batch": 3,
                "note": "-----BEGIN PRIVATE KEY-----\nMC4CAQ\n-----END PRIVATE KEY-----",
            },
        )  # fmt: skip
    finally:
        logger.removeHandler(handler)
    line = msgspec.json.decode(stream.getvalue())
    assert line["event"] == f"key {REDACTED} leaked, auth {REDACTED}"
    assert line["signature"] == line["credential"] == line["note"] == REDACTED
    assert line["headers"] == {"Authorization": REDACTED, "accept": "json"}
    assert (line["request_id"], line["batch"], line["level"]) == ("r1", 3, "warning")
    assert line["ts"].endswith("Z") and line["logger"] == "tests.logs"
    for secret in ("tkx_0123", "c2lnbmF0dXJl", "sk-upstream", "MC4CAQ", "abc.def"):
        assert secret not in stream.getvalue()


def test_request_ids_a_client_may_choose() -> None:
    assert accept_request_id("trace-1:a/b.c") == "trace-1:a/b.c"
    for bad in (None, "", "a b", 'x"y', "x" * 129, "é"):
        assert accept_request_id(bad).startswith("req_")
    assert accept_request_id(None) != accept_request_id(None)


async def test_the_access_line_written_directly_is_the_formatters_and_held_to_the_turn() -> None:
    stream = io.StringIO()
    configure(logging.INFO, stream)
    try:
        access = logging.getLogger("tokex.access")
        direct = direct_handler(access, logging.INFO)
        assert isinstance(direct, JsonLinesHandler)
        fields = {
            "request_id": "tkx_client_chose_this", "method": "POST", "path": "/v1/orders",
            "route": "/v1/orders", "status": 201, "duration_ms": 1.5, "key_id": None,
        }  # fmt: skip
        direct.write_line(logging.INFO, access.name, "access", fields)
        access.info("access", extra=fields)
        assert stream.getvalue() == ""  # held until the loop's next turn
        await asyncio.sleep(0)
        written, logged = (msgspec.json.decode(line) for line in stream.getvalue().splitlines())
        assert abs(parse_ts(written.pop("ts")) - parse_ts(logged.pop("ts"))) < 1
        assert written == logged and list(written) == list(logged)
        assert written["request_id"] == REDACTED and written["status"] == 201
        access.warning("at once")  # a warning is not held, nor what was held before it
        access.info("held")
        access.warning("now")
        assert [json.loads(x)["event"] for x in stream.getvalue().splitlines()[2:]] == [
            "at once", "held", "now",
        ]  # fmt: skip
        # Anything else listening (a filter, a test's capture): no direct line.
        access.addFilter(lambda record: True)
        assert direct_handler(access, logging.INFO) is None
        access.filters.clear()
        assert direct_handler(access, logging.DEBUG) is None  # below the level
        logging.getLogger().addHandler(logging.NullHandler())
        assert direct_handler(access, logging.INFO) is None
    finally:
        configure(logging.INFO)  # back to stderr, one handler


def test_lines_logged_with_no_loop_running_are_written_at_once() -> None:
    stream = io.StringIO()
    configure(logging.INFO, stream)
    try:
        logging.getLogger("tests.logs_at_once").info("no loop", extra={"batch": 1})
        assert json.loads(stream.getvalue())["batch"] == 1
    finally:
        configure(logging.INFO)


def parse_ts(ts: str) -> float:
    return time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000


def test_a_huge_path_or_key_id_makes_no_huge_access_line(server_process: ServerProcess) -> None:
    """Only the HTTP parser capped them: a 60,000-character path was a 60,000-character line,
    on every request anyone cares to send."""
    path = "/v1/" + "p" * 40_000
    key_id = "k" * 20_000  # with the path, within the 64 KiB head cap
    answer = httpx.get(server_process.base_url + path, headers={"X-Tokex-Key": key_id})
    assert answer.status_code == 404
    (line,) = wait_for_lines(server_process, "p" * 1000, 1)
    assert line["path"] == path[:1024] + f"...[+{len(path) - 1024} chars]"
    assert line["key_id"] == key_id[:1024] + f"...[+{len(key_id) - 1024} chars]"
    assert len(json.dumps(line)) < 3 * 1024
    longest = max(len(raw) for raw in server_process.log_path.read_text().splitlines())
    assert longest < 4 * 1024
