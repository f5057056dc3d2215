"""Merkle tree: RFC 6962 reference vectors, a literal RFC reference model, properties."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.merkle import (
    EMPTY_ROOT,
    InvalidProof,
    MemoryNodeStore,
    MerkleFrontier,
    MerkleRangeError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    subtree_root,
    tree_root,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent.parent / "vectors" / "rfc6962"


def _b64(s: str | None) -> bytes:
    return base64.b64decode(s) if s else b""


def _load(kind: str) -> list[tuple[str, dict[str, Any]]]:
    files = sorted((VECTORS / kind).glob("**/*.json"))
    return [(str(f.relative_to(VECTORS)), json.loads(f.read_text())) for f in files]


INCLUSION = _load("inclusion")
CONSISTENCY = _load("consistency")
TREES = json.loads((VECTORS / "trees.json").read_text())
TREE_LEAVES = [leaf_hash(bytes.fromhex(x)) for x in TREES["leaf_inputs_hex"]]


# --------------------------------------------------------------------------- reference model
# RFC 9162 section 2.1 written as literally as possible (recursive, slow, obviously right).


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return d[0]  # d holds leaf hashes already
    k = _k(n)
    return node_hash(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


# --------------------------------------------------------------------------- vectors


@pytest.mark.parametrize(("name", "v"), INCLUSION, ids=[n for n, _ in INCLUSION])
def test_inclusion_vectors(name: str, v: dict[str, Any]) -> None:
    args = (
        _b64(v["leafHash"]),
        v["leafIdx"],
        v["treeSize"],
        [_b64(p) for p in v["proof"] or []],
        _b64(v["root"]),
    )
    if v["wantErr"]:
        with pytest.raises(InvalidProof) as e:
            verify_inclusion(*args)
        assert e.value.code == "proof_invalid"
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize(("name", "v"), CONSISTENCY, ids=[n for n, _ in CONSISTENCY])
def test_consistency_vectors(name: str, v: dict[str, Any]) -> None:
    args = (
        v["size1"],
        v["size2"],
        _b64(v["root1"]),
        _b64(v["root2"]),
        [_b64(p) for p in v["proof"] or []],
    )
    if v["wantErr"]:
        with pytest.raises(InvalidProof):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_vector_counts() -> None:
    # Guard against a silently empty glob (e.g. vectors not copied).
    assert len(INCLUSION) > 80
    assert len(CONSISTENCY) > 80
    assert any(not v["wantErr"] for _, v in INCLUSION)
    assert any(not v["wantErr"] for _, v in CONSISTENCY)


@pytest.mark.parametrize("size", range(9))
def test_tree_roots(size: int) -> None:
    want = bytes.fromhex(TREES["root_hashes_hex_by_size"][size])
    assert root_from_leaf_hashes(TREE_LEAVES[:size]) == want
    f = MerkleFrontier()
    for h in TREE_LEAVES[:size]:
        f.append(h)
    assert f.root() == want
    f2 = MerkleFrontier()
    f2.extend(TREE_LEAVES[:size])
    assert f2.root() == want
    assert MemoryNodeStore(TREE_LEAVES).root(size) == want


def test_primitives() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()


# --------------------------------------------------------------------------- frontier


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 300), st.data())
def test_frontier_matches_reference(n: int, data: st.DataObject) -> None:
    d = leaves(n)
    f = MerkleFrontier()
    nodes: dict[tuple[int, int], bytes] = {}
    cut = data.draw(st.integers(0, n))
    for i, h in enumerate(d):
        if i == cut:  # serialize and resume midway
            blob = f.to_bytes()
            f = MerkleFrontier.from_bytes(blob)
            assert f.to_bytes() == blob
        done = f.append(h)
        assert done[0] == (0, i, h)
        for level, index, hh in done:
            assert (level, index) not in nodes
            nodes[(level, index)] = hh
    assert f.size == n
    assert f.root() == ref_mth(d) == root_from_leaf_hashes(d)
    assert len(f.hashes) == n.bit_count()
    # Every perfect node inside the tree was reported exactly once, with the right hash.
    expected = {(lv, i) for lv in range(n.bit_length()) for i in range(n >> lv)}
    assert set(nodes) == expected
    for (lv, i), hh in nodes.items():
        assert hh == ref_mth(d[i << lv : (i + 1) << lv])
    # Rebuild from the stored nodes.
    g = MerkleFrontier.from_nodes(n, lambda lv, i: nodes[(lv, i)])
    assert g.to_bytes() == f.to_bytes()
    e = MerkleFrontier()
    e.extend(d)
    assert e.to_bytes() == f.to_bytes()


def test_frontier_prefix_root_only_at_its_subtree_boundaries() -> None:
    """A frontier of n leaves gives the root of the first m (what a partial audit export's
    starting frontier can check a trusted checkpoint against) exactly when m is 0 or ends
    one of its subtrees."""
    for n in range(0, 70):
        d = leaves(n)
        f = MerkleFrontier()
        f.extend(d)
        boundaries = {0} | {n >> b << b for b in range(n.bit_length()) if n >> b & 1}
        for m in range(0, n + 3):
            got = f.prefix_root(m)
            if m in boundaries:
                assert got == ref_mth(d[:m]), (n, m)
            else:
                assert got is None, (n, m)


def test_frontier_copy_independent() -> None:
    f = MerkleFrontier()
    f.extend(leaves(5))
    g = f.copy()
    g.append(leaf_hash(b"x"))
    assert f.size == 5 and g.size == 6
    assert f.root() == ref_mth(leaves(5))


def test_frontier_bad_input() -> None:
    f = MerkleFrontier()
    with pytest.raises(ValueError):
        f.append(b"short")
    with pytest.raises(ValueError):
        f.extend([leaf_hash(b"a"), b"short"])
    assert f.size == 1  # the good leaf before the bad one was kept, consistently
    with pytest.raises(ValueError):
        MerkleFrontier.from_bytes(b"\x00" * 7)
    with pytest.raises(ValueError):
        MerkleFrontier.from_bytes((3).to_bytes(8, "big") + b"\x00" * 32)  # needs 2 hashes
    assert MerkleFrontier.from_bytes(MerkleFrontier().to_bytes()).root() == EMPTY_ROOT


# --------------------------------------------------------------------------- proofs


def _flip_each_bit_sample(proof: list[bytes], data: st.DataObject) -> list[list[bytes]]:
    """A few proofs, each with one bit flipped somewhere."""
    out = []
    for _ in range(3):
        j = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        bad = list(proof)
        b = bytearray(bad[j])
        b[bit // 8] ^= 1 << (bit % 8)
        bad[j] = bytes(b)
        out.append(bad)
    return out


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_inclusion_properties(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, 300))
    index = data.draw(st.integers(0, size - 1))
    d = leaves(size)
    store = MemoryNodeStore(d)
    root = store.root()
    proof = store.inclusion_proof(index)
    assert proof == ref_path(index, d)
    verify_inclusion(d[index], index, size, proof, root)

    # From a larger store, the proof for a past size is the same.
    big = MemoryNodeStore(leaves(size + data.draw(st.integers(0, 40))))
    assert big.inclusion_proof(index, size) == proof
    assert big.root(size) == root

    with pytest.raises(InvalidProof):
        verify_inclusion(d[index], index, size, [*proof, b"\x00" * 32], root)
    if proof:
        with pytest.raises(InvalidProof):
            verify_inclusion(d[index], index, size, proof[:-1], root)
        with pytest.raises(InvalidProof):
            verify_inclusion(d[index], index, size, proof[1:], root)
        for bad in _flip_each_bit_sample(proof, data):
            with pytest.raises(InvalidProof):
                verify_inclusion(d[index], index, size, bad, root)
    bit = data.draw(st.integers(0, 255))
    bad_leaf = bytearray(d[index])
    bad_leaf[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(InvalidProof):
        verify_inclusion(bytes(bad_leaf), index, size, proof, root)
    with pytest.raises(InvalidProof):
        verify_inclusion(d[index], index, size, proof, bytes(bad_leaf))
    # Wrong index or size.
    other = data.draw(st.integers(0, size))
    if other != index:
        with pytest.raises(InvalidProof):
            verify_inclusion(d[index], other, size, proof, root)
    # A size whose audit path has another shape. (A size with the same shape, e.g. 3 and 4
    # for index 0, recomputes the same root: the root, not the size, pins the tree.)
    other_size = data.draw(st.integers(index + 1, 400))
    if len(ref_path(index, leaves(other_size))) != len(proof):
        with pytest.raises(InvalidProof):
            verify_inclusion(d[index], index, other_size, proof, root)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_consistency_properties(data: st.DataObject) -> None:
    second = data.draw(st.integers(1, 300))
    first = data.draw(st.integers(1, second))
    d = leaves(second)
    store = MemoryNodeStore(d)
    r1, r2 = store.root(first), store.root()
    assert r1 == ref_mth(d[:first])
    proof = store.consistency_proof(first, second)
    assert proof == ref_subproof(first, d, True)
    verify_consistency(first, second, r1, r2, proof)

    big = MemoryNodeStore(leaves(second + data.draw(st.integers(0, 40))))
    assert big.consistency_proof(first, second) == proof

    if first == second:
        assert proof == []
        with pytest.raises(InvalidProof):
            verify_consistency(first, second, r1, r2, [r1])
        return
    with pytest.raises(InvalidProof):
        verify_consistency(first, second, r1, r2, [*proof, b"\x00" * 32])
    with pytest.raises(InvalidProof):
        verify_consistency(first, second, r1, r2, proof[:-1])
    with pytest.raises(InvalidProof):
        verify_consistency(first, second, r1, r2, proof[1:])
    for bad in _flip_each_bit_sample(proof, data):
        with pytest.raises(InvalidProof):
            verify_consistency(first, second, r1, r2, bad)
    with pytest.raises(InvalidProof):
        verify_consistency(first, second, r2, r1, proof)
    with pytest.raises(InvalidProof):
        verify_consistency(second, first, r2, r1, proof)
    # A fork: the same first tree, a different continuation.
    fork = MemoryNodeStore([*d[:first], *leaves(second)[first:-1], leaf_hash(b"fork")])
    with pytest.raises(InvalidProof):
        verify_consistency(first, second, r1, fork.root(), proof)


def test_consistency_edge_cases() -> None:
    h = leaf_hash(b"a")
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(5, 5, h, h, [])
    with pytest.raises(InvalidProof) as e:
        verify_consistency(0, 3, EMPTY_ROOT, h, [])
    assert e.value.reason == "empty_tree"
    with pytest.raises(InvalidProof) as e:
        verify_consistency(4, 3, h, h, [h])
    assert e.value.reason == "size_order"
    with pytest.raises(InvalidProof) as e:
        verify_consistency(1, 2, h, h, [b"short"])
    assert e.value.reason == "bad_hash_size"


def test_generation_range_errors() -> None:
    store = MemoryNodeStore(leaves(10))
    with pytest.raises(MerkleRangeError):
        store.inclusion_proof(10)
    with pytest.raises(MerkleRangeError):
        store.inclusion_proof(0, 11)
    with pytest.raises(MerkleRangeError):
        store.consistency_proof(0, 5)
    with pytest.raises(MerkleRangeError):
        store.consistency_proof(6, 5)
    with pytest.raises(MerkleRangeError):
        store.root(11)
    with pytest.raises(MerkleRangeError):
        subtree_root(1, 3, store.get_node)  # not an RFC subtree: unaligned
    assert tree_root(0, store.get_node) == EMPTY_ROOT


def test_only_perfect_nodes_requested() -> None:
    """Proof generation never asks the node source for a node outside the tree."""
    size = 77
    d = leaves(size + 50)  # the store knows more than the tree we ask about
    store = MemoryNodeStore(d)
    asked: list[tuple[int, int]] = []

    def get_node(level: int, index: int) -> bytes:
        asked.append((level, index))
        assert (index + 1) << level <= size
        return store.get_node(level, index)

    for i in range(size):
        assert inclusion_proof(i, size, get_node) == ref_path(i, d[:size])
    for m in range(1, size + 1):
        assert consistency_proof(m, size, get_node) == ref_subproof(m, d[:size], True)
    assert asked


def test_wire_proofs_round_trip() -> None:
    import msgspec

    from schemas.ledger_proofs import ConsistencyProof, InclusionProof

    d = leaves(13)
    store = MemoryNodeStore(d)
    ip = InclusionProof(leaf_index=5, tree_size=13, hashes=store.inclusion_proof(5))
    got = msgspec.json.decode(msgspec.json.encode(ip), type=InclusionProof)
    verify_inclusion(d[5], got.leaf_index, got.tree_size, got.hashes, store.root())
    cp = ConsistencyProof(first=6, second=13, hashes=store.consistency_proof(6))
    got2 = msgspec.json.decode(msgspec.json.encode(cp), type=ConsistencyProof)
    verify_consistency(got2.first, got2.second, store.root(6), store.root(), got2.hashes)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"first":1,"second":2,"hashes":["YQ=="]}', type=ConsistencyProof)
