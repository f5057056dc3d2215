"""Rotating and revoking request-signing keys, over HTTP against a real `tokex serve`.

A key added to an account signs at once; a revoked one is refused (401 `unknown_key`) from
the next request on, by the process that revoked it; the owner cannot lock itself out by
revoking its last key, an operator can; another account's key is not even confirmed
(404); and a websocket `orders` subscription made with a revoked key ends (close 4001)
without cancelling the owner's orders.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from market.client import TokexApiError, TokexClient
from market.keys import private_key_pem, public_key_b64
from market.stream import CLOSE_KEY_REVOKED, KEY_RECHECK_S
from ops.cli import main
from schemas.accounts import Role
from schemas.market import Side
from schemas.trading import CreateInstrument
from tests.market.test_stream_e2e import _signed_subscribe, recv
from tests.support.market import order
from tests.support.server import ServerProcess, operator_client

SYM = "llama-3.1-70b/2030-12-01T00Z/1h"


async def _refused(client: TokexClient) -> TokexApiError:
    with pytest.raises(TokexApiError) as refused:
        await client.me()
    return refused.value


async def test_rotate_a_key_then_the_old_one_is_refused_at_once(
    db_url: str, server_process: ServerProcess
) -> None:
    operator = await operator_client(db_url, server_process.base_url)
    try:
        created = await operator.create_account(Role.BUYER, "acme")
        old = operator.as_account(created)
        new_key = Ed25519PrivateKey.generate()
        added = await old.add_key(new_key)
        assert added.account_id == created.account_id and added.revoked_at_ms is None
        new = old.with_key(added.key_id, new_key)
        assert (await new.me()).key_ids == [created.key_id, added.key_id]

        # The same public key again, or anyone's: 409, as at creation.
        with pytest.raises(TokexApiError) as duplicate:
            await old.add_key(new_key)
        assert (duplicate.value.status, duplicate.value.code) == (409, "duplicate_public_key")
        with pytest.raises(TokexApiError) as bad:
            await old.add_key("A" * 43 + "=")  # 32 zero bytes: a small-order point
        assert bad.value.status == 400

        revoked = await new.revoke_key(created.key_id)  # the new key revokes the old
        assert revoked.key_id == created.key_id and revoked.revoked_at_ms is not None
        refused = await _refused(old)  # the very next request: no cache to wait out
        assert (refused.status, refused.code) == (401, "unknown_key")
        assert (await new.me()).key_ids == [added.key_id]
        # A second revocation changes nothing and answers the same view.
        assert await new.revoke_key(created.key_id) == revoked
        # The remaining key may also revoke itself... but it is the last one: refused.
        with pytest.raises(TokexApiError) as last:
            await new.revoke_key(added.key_id)
        assert (last.value.status, last.value.code) == (409, "last_active_key")
        assert (await new.me()).key_ids == [added.key_id]
    finally:
        await operator.aclose()


async def test_the_operator_may_revoke_the_last_key_and_others_keys_are_404(
    db_url: str, server_process: ServerProcess
) -> None:
    operator = await operator_client(db_url, server_process.base_url)
    try:
        a = await operator.create_account(Role.BUYER, "a")
        b = await operator.create_account(Role.PROVIDER, "b")
        alice, bob = operator.as_account(a), operator.as_account(b)
        for caller, key_id in ((alice, b.key_id), (bob, a.key_id), (alice, "key_" + "0" * 16)):
            with pytest.raises(TokexApiError) as other:
                await caller.revoke_key(key_id)
            assert (other.value.status, other.value.code) == (404, "signing_key_not_found")
        # The operator names the account: a key of another account is 404 there too.
        with pytest.raises(TokexApiError) as mismatch:
            await operator.revoke_key(b.key_id, account_id=a.account_id)
        assert mismatch.value.status == 404
        with pytest.raises(TokexApiError) as forbidden:
            await alice.revoke_key(b.key_id, account_id=b.account_id)
        assert forbidden.value.code == "forbidden_role"

        view = await operator.revoke_key(a.key_id, account_id=a.account_id)  # its last key
        assert view.revoked_at_ms is not None
        assert (await _refused(alice)).code == "unknown_key"
        assert (await operator.get_account(a.account_id)).key_ids == []
        assert await operator.revoke_key(a.key_id, account_id=a.account_id) == view
        assert (await bob.me()).key_ids == [b.key_id]  # nobody else is touched
    finally:
        await operator.aclose()


async def test_a_revoked_keys_orders_subscription_ends_and_its_orders_stay(
    db_url: str, server_process: ServerProcess
) -> None:
    operator = await operator_client(db_url, server_process.base_url)
    try:
        await operator.create_instrument(
            CreateInstrument(symbol=SYM, lot_size=1000, tick_size=5, price_min=5, price_max=10_000)
        )
        created = await operator.create_account(Role.BUYER, "leaky")
        await operator.deposit("dep", created.account_id, 10_000_000)
        leaked = operator.as_account(created)
        resting = await leaked.place_order(order("rest", Side.BUY, 1000, 4_000))
        spare = Ed25519PrivateKey.generate()
        owner = leaked.with_key((await leaked.add_key(spare)).key_id, spare)

        url = server_process.base_url.replace("http://", "ws://") + "/v1/stream"
        async with connect(url) as ws:
            subscribe = leaked.orders_subscribe(cancel_on_disconnect=True)
            await ws.send(json.dumps(subscribe))
            assert (await recv(ws))["type"] == "subscribed"
            await owner.revoke_key(created.key_id)
            with pytest.raises(ConnectionClosed):
                while True:  # whatever frames were queued, then the close
                    await asyncio.wait_for(ws.recv(), KEY_RECHECK_S * 5)
            assert ws.close_code == CLOSE_KEY_REVOKED
            assert ws.close_reason is not None and "revoked" in ws.close_reason
        await asyncio.sleep(0.5)
        # The revocation locked the leaker out; it did not cancel the owner's orders.
        assert (await owner.order(resting.order_id)).status == "open"
        # And the revoked key cannot subscribe again.
        async with connect(url) as ws:
            await ws.send(json.dumps(_signed_subscribe(leaked)))
            assert (await recv(ws))["code"] == "unknown_key"
    finally:
        await operator.aclose()


async def test_cli_add_key_and_revoke_key(
    db_url: str, server_process: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    operator = await operator_client(db_url, server_process.base_url)
    try:
        created = await operator.create_account(Role.BUYER, "cli")
        assert created.private_key is not None
        key_file = tmp_path / "old.pem"
        key_file.write_text(created.private_key)
        base = ["--url", server_process.base_url, "--key-id", created.key_id]

        async def tokex(*argv: str, key_file: Path = key_file) -> tuple[int, str]:
            capsys.readouterr()
            code = await asyncio.to_thread(main, [*argv, *base, "--key-file", str(key_file)])
            captured = capsys.readouterr()
            return code, captured.out + captured.err

        new_file = tmp_path / "new.pem"
        code, out = await tokex("accounts", "add-key", "--out", str(new_file), "--json")
        assert code == 0, out
        added = json.loads(out.splitlines()[0])
        assert added["account_id"] == created.account_id and new_file.stat().st_mode & 0o077 == 0
        pub = tmp_path / "third.pub"
        pub.write_text(public_key_b64(Ed25519PrivateKey.generate()))
        code, out = await tokex("accounts", "add-key", "--public-key", str(pub))
        assert code == 0 and "added to " + created.account_id in out, out
        code, out = await tokex("accounts", "add-key", "--public-key", str(pub))
        assert code == 1 and "duplicate_public_key" in out, out

        # Signed by the old key, revoke the new one (not the signer: the option is not
        # the argument), then the old one itself.
        code, out = await tokex("accounts", "revoke-key", added["key_id"])
        assert code == 0 and f"key {added['key_id']} of {created.account_id} revoked" in out, out
        assert added["key_id"] not in (await operator.get_account(created.account_id)).key_ids
        code, out = await tokex("accounts", "revoke-key", created.key_id)
        assert code == 0, out
        code, out = await tokex("accounts", "list")
        assert code == 1 and "unknown_key" in out, out
        # The operator, naming the account: the rest of its keys, the last one included.
        op_file = tmp_path / "op.pem"
        assert operator.private_key is not None and operator.key_id is not None
        op_file.write_text(private_key_pem(operator.private_key))
        for key_id in [k for k in (await operator.get_account(created.account_id)).key_ids]:
            code = await asyncio.to_thread(
                main,
                ["accounts", "revoke-key", key_id, "--account", created.account_id, "--json",
                 "--url", server_process.base_url, "--key-id", operator.key_id,
                 "--key-file", str(op_file)],
            )  # fmt: skip
            assert code == 0
        assert (await operator.get_account(created.account_id)).key_ids == []
    finally:
        await operator.aclose()


async def test_an_account_holds_at_most_ten_active_keys(
    db_url: str, server_process: ServerProcess
) -> None:
    """The rate limit is per key: an account minting keys must not multiply it, so beyond
    10 active keys an addition is 409 `too_many_keys`; a revoked key frees its place
    (found by a review)."""
    operator = await operator_client(db_url, server_process.base_url)
    try:
        owner = operator.as_account(await operator.create_account(Role.BUYER, "minter"))
        added = [await owner.add_key(Ed25519PrivateKey.generate()) for _ in range(9)]
        assert len((await owner.me()).key_ids) == 10
        with pytest.raises(TokexApiError) as full:
            await owner.add_key(Ed25519PrivateKey.generate())
        assert (full.value.status, full.value.code) == (409, "too_many_keys")
        assert len((await owner.me()).key_ids) == 10
        await owner.revoke_key(added[0].key_id)
        await owner.add_key(Ed25519PrivateKey.generate())
        assert len((await owner.me()).key_ids) == 10
    finally:
        await operator.aclose()
