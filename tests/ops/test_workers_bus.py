"""`tokex serve --workers 2` losing its embedded NATS: the bus comes back by itself, and
while it is down a gateway answers 503 `bus_unavailable` at once (not after the 10 s
request timeout)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from market.client import TokexApiError, TokexClient
from market.keys import load_private_key
from market.sequencer import PlaceOp
from market.sequencer.remote import BusUnavailable, RemoteSequencer
from ops.bus import EmbeddedNats, close, connect
from schemas.accounts import Role
from schemas.market import Side
from schemas.trading import CreateInstrument, PlaceOrder
from tests.support.server import ServerProcess, operator_client

SYM = "llama-3.1-70b/2030-12-01T00Z/1h"


def _order(coid: str) -> PlaceOrder:
    return PlaceOrder(client_order_id=coid, instrument=SYM, side=Side.BUY, quantity=1000, price=5)


async def test_a_gateway_cut_from_the_bus_refuses_at_once_as_bus_unavailable(
    tmp_path: Path,
) -> None:
    embedded = EmbeddedNats(tmp_path)
    nats = await connect(embedded.url, name="test", token=embedded.token)
    remote = RemoteSequencer(nats, timeout_s=10.0)
    try:
        embedded.stop()
        deadline = time.monotonic() + 5
        while nats.is_connected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        began = time.monotonic()
        with pytest.raises(BusUnavailable) as refused:
            await remote.submit(PlaceOp("acc_1", _order("c1")))
        assert time.monotonic() - began < 0.5
        assert refused.value.code == "bus_unavailable"
        with pytest.raises(BusUnavailable):
            remote.require_bus()  # what /health of a gateway process says
    finally:
        await close(nats)  # reconnecting to a server that is gone: no error


def _nats_server_pid(proc: ServerProcess) -> int:
    assert proc.proc is not None
    found = subprocess.run(["pgrep", "-P", str(proc.proc.pid)], capture_output=True, text=True)
    for child in found.stdout.split():
        if "nats-server" in Path(f"/proc/{child}/cmdline").read_text():
            return int(child)
    raise AssertionError("no embedded nats-server")


async def _funded_buyer(db_url: str, proc: ServerProcess) -> tuple[TokexClient, TokexClient]:
    operator = await operator_client(db_url, proc.base_url)
    await operator.create_instrument(
        CreateInstrument(symbol=SYM, lot_size=1000, tick_size=5, price_min=5,
                         price_max=100_000, maker_fee_bps=10, taker_fee_bps=20)
    )  # fmt: skip
    created = await operator.create_account(Role.BUYER, "bus-buyer")
    await operator.deposit("dep-bus", created.account_id, 10_000_000)
    assert created.private_key is not None
    key = load_private_key(created.private_key)
    return operator, TokexClient(proc.base_url, created.key_id, key)


async def _orders_until_taken(buyer: TokexClient, within_s: float) -> list[str]:
    """Place orders until one is taken; each refusal must be a quick 503 with Retry-After."""
    refusals: list[str] = []
    deadline = time.monotonic() + within_s
    n = 0
    while time.monotonic() < deadline:
        began = time.monotonic()
        try:
            await buyer.place_order(_order(f"after-kill-{n}"))
            return refusals
        except TokexApiError as exc:
            assert exc.status == 503 and exc.retry_after is not None, exc
            assert time.monotonic() - began < 3.0, f"{exc.code} took the request timeout"
            refusals.append(exc.code)
        except httpx.TransportError:
            refusals.append("transport")
        n += 1
        await asyncio.sleep(0.1)
    raise AssertionError(f"no order taken within {within_s}s: {refusals}")


async def test_a_killed_embedded_bus_is_restarted_and_trading_resumes(
    db_url: str, tmp_path: Path
) -> None:
    proc = ServerProcess(
        database_url=db_url,
        data_dir=tmp_path,
        extra_args=("--workers", "2"),
        env={"TOKEX_RATE_LIMIT": "10000", "TOKEX_RATE_BURST": "10000"},
    )
    proc.start()
    try:
        deadline = time.monotonic() + 30
        while proc.log_path.read_text().count("Application startup complete") < 2:
            assert time.monotonic() < deadline, proc.log()
            await asyncio.sleep(0.05)
        operator, buyer = await _funded_buyer(db_url, proc)
        await buyer.place_order(_order("before-kill"))
        killed = _nats_server_pid(proc)
        os.kill(killed, signal.SIGKILL)
        # A request already sent when the server dies waits its timeout (README); the
        # refusals timed here are those sent once the gateways can have seen it go.
        await asyncio.sleep(0.5)
        await _orders_until_taken(buyer, within_s=20)
        assert _nats_server_pid(proc) != killed  # a new server, on the same port and token
        proc.wait_healthy(10)
        open_ids = {o.client_order_id for o in await buyer.orders()}
        assert "before-kill" in open_ids
        await buyer.aclose()
        await operator.aclose()
    finally:
        code = proc.stop()
    log = proc.log_path.read_text(errors="replace")
    assert code == 0, log[-3000:]
    assert "embedded NATS exited" in log
    assert "Traceback" not in log and "Application shutdown failed" not in log, log[-5000:]
