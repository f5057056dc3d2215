"""The public ledger API, in process on a real database: proofs verify against the signed
checkpoints' roots, altered proofs do not, bad parameters get {"code", "message"}."""

from __future__ import annotations

import base64
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from ledger.checkpoint import Checkpoint, verify_checkpoint
from ledger.keys import DEFAULT_KEY_FILE, rotate, write_key_file
from ledger.log import open_ledger
from ledger.merkle import InvalidProof, leaf_hash, verify_consistency, verify_inclusion
from ledger.note import Signer, Verifier
from ops.app import create_app
from ops.config import DEFAULT_EXCHANGE_NAME, Settings
from schemas.ledger import Account, Posting, Transaction
from tests.support.server import ServerProcess

ORIGIN = "test.tokex/ledger"
BANK = Account("exchange", "USD", "bank")
USERS = [Account(f"u{i}", "USD", "cash") for i in range(4)]
Client = AsyncTestClient[Litestar]


def b64(s: str) -> bytes:
    return base64.b64decode(s)


@pytest.fixture
async def filled(db_url: str) -> AsyncIterator[tuple[str, list[Verifier]]]:
    """A ledger of ~150 entries in batches of random sizes, with one key rotation."""
    first, second = Signer.generate(ORIGIN), Signer.generate(ORIGIN)
    ledger, log = await open_ledger(db_url, first)
    rng = random.Random(11)
    try:
        n = 0
        for b in range(15):
            if b == 7:
                await rotate(ledger, log, second, time_ms=500)
            txs = []
            for _ in range(rng.randint(1, 20)):
                n += 1
                user = rng.choice(USERS)
                txs.append(
                    Transaction(
                        id=f"d{n}",
                        code="deposit",
                        time=100 + b,
                        postings=(Posting(BANK, -n), Posting(user, n)),
                    )
                )
            await ledger.apply_batch(txs)
    finally:
        await ledger.close()
    yield db_url, [first.verifier(), second.verifier()]


@pytest.fixture
async def client(filled: tuple[str, list[Verifier]]) -> AsyncIterator[Client]:
    app = create_app(Settings(database_url=filled[0]))
    async with AsyncTestClient(app=app) as c:
        yield c


async def signed_roots(client: Client, keys: list[Verifier]) -> dict[int, bytes]:
    r = await client.get("/v1/ledger/checkpoints", params={"limit": 1000})
    assert r.status_code == 200
    roots = {}
    for item in r.json()["checkpoints"]:
        cp = verify_checkpoint(item["note"], keys, ORIGIN)
        assert (cp.size, cp.root_hash) == (item["tree_size"], b64(item["root"]))
        roots[cp.size] = cp.root_hash
    return roots


async def test_latest_checkpoint_is_a_signed_note(
    client: Client, filled: tuple[str, list[Verifier]]
) -> None:
    r = await client.get("/v1/ledger/checkpoint")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    cp = verify_checkpoint(r.text, [filled[1][1]], ORIGIN)  # signed by the rotated-to key
    one = (await client.get("/v1/ledger/checkpoints", params={"size": cp.size})).json()
    assert one["checkpoints"][0]["note"] == r.text
    keys = (await client.get("/v1/ledger/public-keys")).json()
    assert keys["origin"] == ORIGIN
    assert [k["key"] for k in keys["keys"]] == [v.encode() for v in filled[1]]
    assert keys["keys"][0]["announced_in_tx"] is None
    assert keys["keys"][1]["valid_from_size"] == keys["keys"][1]["announced_in_tx"] + 1
    assert isinstance(Checkpoint.parse(r.text.split("\n\n")[0] + "\n"), Checkpoint)


async def test_random_inclusion_proofs_verify_and_altered_ones_fail(
    client: Client, filled: tuple[str, list[Verifier]]
) -> None:
    roots = await signed_roots(client, filled[1])
    sizes = sorted(roots)
    rng = random.Random(5)
    leaves: dict[int, bytes] = {}
    for _ in range(25):
        size = rng.choice(sizes)
        index = rng.randrange(size)
        if index not in leaves:
            e = (await client.get(f"/v1/ledger/entries/{index}")).json()
            assert e["transaction"]["index"] == index
            assert leaf_hash(b64(e["canonical"])) == b64(e["leaf_hash"])
            leaves[index] = b64(e["leaf_hash"])
        r = await client.get("/v1/ledger/proof/inclusion", params={"index": index, "size": size})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["leaf_index"], body["tree_size"]) == (index, size)
        hashes = [b64(h) for h in body["hashes"]]
        verify_inclusion(leaves[index], index, size, hashes, roots[size])
        if hashes:
            bad = list(hashes)
            k = rng.randrange(len(bad))
            bad[k] = bytes([bad[k][0] ^ 1]) + bad[k][1:]
            with pytest.raises(InvalidProof):
                verify_inclusion(leaves[index], index, size, bad, roots[size])
        if index + 1 < size:
            with pytest.raises(InvalidProof):
                verify_inclusion(leaves[index], index + 1, size, hashes, roots[size])


async def test_random_consistency_proofs_verify_and_altered_ones_fail(
    client: Client, filled: tuple[str, list[Verifier]]
) -> None:
    roots = await signed_roots(client, filled[1])
    sizes = sorted(roots)
    rng = random.Random(6)
    for _ in range(25):
        first, second = sorted(rng.sample(sizes, 2))
        r = await client.get(
            "/v1/ledger/proof/consistency", params={"first": first, "second": second}
        )
        assert r.status_code == 200, r.text
        hashes = [b64(h) for h in r.json()["hashes"]]
        verify_consistency(first, second, roots[first], roots[second], hashes)
        with pytest.raises(InvalidProof):
            verify_consistency(first, second, roots[first], roots[second], hashes[:-1])
        k = rng.randrange(len(hashes))
        bad = [*hashes[:k], bytes(32), *hashes[k + 1 :]]
        with pytest.raises(InvalidProof):
            verify_consistency(first, second, roots[first], roots[second], bad)


async def test_defaults_to_the_latest_checkpoint(client: Client) -> None:
    latest = Checkpoint.parse(
        (await client.get("/v1/ledger/checkpoint")).text.split("\n\n")[0] + "\n"
    )
    r = (await client.get("/v1/ledger/proof/inclusion", params={"index": 0})).json()
    assert r["tree_size"] == latest.size
    r = (await client.get("/v1/ledger/proof/consistency", params={"first": 1})).json()
    assert r["second"] == latest.size


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/v1/ledger/proof/inclusion", {"index": 5, "size": 5}, 400, "proof_range_invalid"),
        ("/v1/ledger/proof/inclusion", {"index": 0, "size": 10**9}, 400, "proof_range_invalid"),
        ("/v1/ledger/proof/inclusion", {"index": -1, "size": 3}, 400, "invalid_request"),
        ("/v1/ledger/proof/inclusion", {"index": "x"}, 400, "invalid_request"),
        ("/v1/ledger/proof/consistency", {"first": 0, "second": 3}, 400, "proof_range_invalid"),
        ("/v1/ledger/proof/consistency", {"first": 9, "second": 3}, 400, "proof_range_invalid"),
        ("/v1/ledger/checkpoints", {"size": 10**9}, 404, "checkpoint_not_found"),
        ("/v1/ledger/entries/100000", {}, 404, "entry_not_found"),
        ("/v1/ledger/entries/abc", {}, 404, "not_found"),
    ],
)
async def test_bad_parameters_get_an_error_body(
    client: Client, path: str, params: dict[str, int | str], status: int, code: str
) -> None:
    r = await client.get(path, params=params)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code
    assert body["message"]


async def test_an_empty_ledger_has_no_checkpoint(db_url: str) -> None:
    async with AsyncTestClient(app=create_app(Settings(database_url=db_url))) as c:
        r = await c.get("/v1/ledger/checkpoint")
        assert (r.status_code, r.json()["code"]) == (404, "checkpoint_not_found")
        r = await c.get("/v1/ledger/proof/inclusion", params={"index": 0})
        assert r.status_code == 404
        assert (await c.get("/v1/ledger/public-keys")).json() == {"origin": None, "keys": []}


async def test_over_a_real_server(db_url: str, tmp_path: Path) -> None:
    """`tokex serve` serves the log the writer kept. The server is started afterwards with
    the same key in its data dir: it may open the single writer itself (the sequencer)."""
    signer = Signer.generate(DEFAULT_EXCHANGE_NAME)
    write_key_file(tmp_path / DEFAULT_KEY_FILE, signer)
    ledger, _ = await open_ledger(db_url, signer)
    try:
        for b in range(3):
            await ledger.apply_batch(
                [
                    Transaction(
                        id=f"s{b}-{i}",
                        code="deposit",
                        time=1,
                        postings=(Posting(BANK, -1 - i), Posting(USERS[0], 1 + i)),
                    )
                    for i in range(b + 2)
                ]
            )
    finally:
        await ledger.close()
    with ServerProcess(database_url=db_url, data_dir=tmp_path) as proc:
        async with httpx.AsyncClient(base_url=proc.base_url) as http:
            note = (await http.get("/v1/ledger/checkpoint")).text
            cp = verify_checkpoint(note, [signer.verifier()], DEFAULT_EXCHANGE_NAME)
            assert cp.size >= 2 + 3 + 4
            entry = (await http.get("/v1/ledger/entries/4")).json()
            proof = (await http.get("/v1/ledger/proof/inclusion", params={"index": 4})).json()
            hashes = [b64(h) for h in proof["hashes"]]
            verify_inclusion(b64(entry["leaf_hash"]), 4, cp.size, hashes, cp.root_hash)
            bad = await http.get("/v1/ledger/proof/consistency", params={"first": 0})
            assert (bad.status_code, bad.json()["code"]) == (400, "proof_range_invalid")
