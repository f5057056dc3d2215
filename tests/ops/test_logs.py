"""Structured logs: JSON lines, a request id from the access line to the sequencer's batch
and commit lines, and no secret in any line."""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

import httpx
import msgspec

from market.request_context import accept_request_id
from ops.logs import REDACTED, JsonFormatter
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
