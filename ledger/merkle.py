"""Merkle tree of the ledger log, per RFC 9162 section 2.1 (identical to RFC 6962).

Pure functions, no I/O. Hashes are 32-byte SHA-256 digests (`bytes`).

Tree shape and hashes
---------------------
- ``leaf_hash(d) = SHA-256(0x00 || d)``, ``node_hash(l, r) = SHA-256(0x01 || l || r)``.
- The hash of an empty tree is ``SHA-256("")``; a tree of one leaf hashes to its leaf hash;
  a tree of n > 1 leaves splits at k = the largest power of two < n.

Perfect nodes
-------------
A *perfect node* ``(level, index)`` is the root of the complete subtree over leaves
``[index * 2**level, (index + 1) * 2**level)``; level 0 nodes are the leaf hashes. Once all its
leaves exist a perfect node never changes, so a store can write each one exactly once. Every
other node of a tree of size n (those on the ragged right edge) is composed here from perfect
nodes on demand. Proof generation therefore takes a ``get_node(level, index) -> bytes``
callback and only ever asks it for perfect nodes lying fully inside the tree.

Frontier (compact range)
------------------------
`MerkleFrontier` keeps, for a log of size n, the perfect nodes of the right edge: one per set
bit of n, largest (leftmost) first, so at most log2(n) + 1 hashes. Appending costs one leaf
plus, amortized, one node hash; `root()` folds the at most 64 frontier hashes.
Serialized form (`to_bytes`): ``size`` as 8-byte big-endian unsigned integer, then the
popcount(size) frontier hashes (32 bytes each), largest subtree first.

Verification
------------
`verify_inclusion` and `verify_consistency` follow the algorithms of RFC 9162 sections
2.1.3.2 and 2.1.4.2 literally (fn/sn right-shifting). In addition every hash in a proof, and
the leaf hash, must be 32 bytes long. Edge cases follow the RFC and the transparency-dev
reference vectors: for ``first == second`` the proof must be empty and the roots equal (and
for ``0 == 0`` equal to the empty-tree hash); a consistency proof *from* size 0 to a larger
size is rejected (it proves nothing; callers treat the empty tree as a prefix of every tree
without asking for a proof). Failures raise `InvalidProof` (code ``proof_invalid``) whose
``reason`` attribute is one of the stable strings listed on the class.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from schemas.errors import DomainError, ErrorKind

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "InvalidProof",
    "MemoryNodeStore",
    "MerkleFrontier",
    "MerkleRangeError",
    "NodeSource",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "subtree_root",
    "tree_root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
_sha256 = hashlib.sha256
EMPTY_ROOT: bytes = _sha256(b"").digest()

NodeSource = Callable[[int, int], bytes]
"""``get_node(level, index)``: hash of the perfect node covering leaves
``[index << level, (index + 1) << level)``."""

_MAX_SIZE = (1 << 64) - 1  # tree sizes are uint64 on the wire (RFC 9162, checkpoints)


class InvalidProof(DomainError):
    """A Merkle inclusion or consistency proof does not verify.

    ``reason`` is a stable machine-readable detail:
    ``bad_hash_size`` (a hash is not 32 bytes), ``index_out_of_range`` (leaf index >= size),
    ``size_order`` (first > second), ``empty_tree`` (proof from or in an empty tree),
    ``wrong_length`` (proof has too few or too many hashes), ``root_mismatch`` (the
    recomputed root differs from the expected root).
    """

    code = "proof_invalid"
    kind = ErrorKind.INVALID

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class MerkleRangeError(DomainError):
    """A proof or root was requested for sizes/indices that do not exist in the tree."""

    code = "proof_range_invalid"
    kind = ErrorKind.INVALID


# --------------------------------------------------------------------------- hashing


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || data)."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """Root hash of the tree whose leaves have the given hashes (all of them).

    Hashes level by level, pairing neighbours and promoting an unpaired last node; this is
    the same tree as RFC 9162's "split at the largest power of two" recursion.
    """
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    sha = _sha256
    level: Sequence[bytes] = hashes
    while n > 1:
        it = iter(level)
        nxt = [sha(b"\x01" + a + b).digest() for a, b in zip(it, it, strict=False)]
        if n & 1:
            nxt.append(level[n - 1])
        level = nxt
        n = len(nxt)
    return level[0]


# --------------------------------------------------------------------------- frontier


class MerkleFrontier:
    """Incremental appender: the right-edge perfect nodes of a log of ``size`` leaves.

    ``append`` returns the perfect nodes it completed, as ``(level, index, hash)`` tuples
    (the leaf itself first, at level 0), which is what a node store persists.
    """

    __slots__ = ("_size", "_stack")

    def __init__(self) -> None:
        self._size = 0
        # Perfect subtree roots of the right edge, largest first: one per set bit of size.
        self._stack: list[bytes] = []

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The frontier hashes, largest (leftmost) subtree first."""
        return tuple(self._stack)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; return the perfect nodes completed by it (leaf first)."""
        if len(leaf) != HASH_SIZE:
            raise ValueError("leaf hash must be 32 bytes")
        n = self._size
        if n >= _MAX_SIZE:
            raise MerkleRangeError("tree is full")
        stack = self._stack
        done = [(0, n, leaf)]
        h = leaf
        level = 0
        sha = _sha256
        while n & 1:
            h = sha(b"\x01" + stack.pop() + h).digest()
            n >>= 1
            level += 1
            done.append((level, n, h))
        stack.append(h)
        self._size += 1
        return done

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append many leaf hashes without reporting completed nodes (the verifier's path)."""
        stack = self._stack
        push = stack.append
        pop = stack.pop
        sha = _sha256
        size = self._size
        try:
            for h in leaves:
                if len(h) != HASH_SIZE:
                    raise ValueError("leaf hash must be 32 bytes")
                n = size
                while n & 1:
                    h = sha(b"\x01" + pop() + h).digest()
                    n >>= 1
                push(h)
                size += 1
        finally:
            self._size = size

    def root(self) -> bytes:
        """Root hash of the tree of the current size."""
        stack = self._stack
        if not stack:
            return EMPTY_ROOT
        sha = _sha256
        h = stack[-1]
        for i in range(len(stack) - 2, -1, -1):
            h = sha(b"\x01" + stack[i] + h).digest()
        return h

    def prefix_root(self, size: int) -> bytes | None:
        """Root of the tree of the first ``size`` leaves, if this frontier determines it:
        ``size`` is 0, or the leaves of its first few subtrees (for a frontier of 14 = 8 + 4
        + 2 leaves: 0, 8, 12 or 14). Any other size needs leaves the frontier has folded
        away: None."""
        if size == 0:
            return EMPTY_ROOT
        covered = 0
        bits = [1 << b for b in range(self._size.bit_length() - 1, -1, -1) if self._size >> b & 1]
        for count, bit in enumerate(bits, start=1):
            covered += bit
            if covered == size:
                h = self._stack[count - 1]
                for i in range(count - 2, -1, -1):
                    h = _sha256(b"\x01" + self._stack[i] + h).digest()
                return h
            if covered > size:
                break
        return None

    def copy(self) -> MerkleFrontier:
        f = MerkleFrontier()
        f._size = self._size
        f._stack = list(self._stack)
        return f

    def to_bytes(self) -> bytes:
        return self._size.to_bytes(8, "big") + b"".join(self._stack)

    @classmethod
    def from_bytes(cls, data: bytes) -> MerkleFrontier:
        if len(data) < 8:
            raise ValueError("frontier: truncated")
        size = int.from_bytes(data[:8], "big")
        count = size.bit_count()
        if len(data) != 8 + HASH_SIZE * count:
            raise ValueError("frontier: length does not match size")
        f = cls()
        f._size = size
        f._stack = [data[8 + HASH_SIZE * i : 8 + HASH_SIZE * (i + 1)] for i in range(count)]
        return f

    @classmethod
    def from_nodes(cls, size: int, get_node: NodeSource) -> MerkleFrontier:
        """Rebuild the frontier of a tree of ``size`` leaves from stored perfect nodes."""
        if not 0 <= size <= _MAX_SIZE:
            raise MerkleRangeError("size out of range")
        f = cls()
        start = 0
        for level in range(size.bit_length() - 1, -1, -1):
            if (size >> level) & 1:
                f._stack.append(get_node(level, start >> level))
                start += 1 << level
        f._size = size
        return f

    def __repr__(self) -> str:
        return f"MerkleFrontier(size={self._size}, root={self.root().hex()})"


# --------------------------------------------------------------------------- proofs


def subtree_root(start: int, end: int, get_node: NodeSource) -> bytes:
    """Hash of the RFC 9162 subtree over leaves ``[start, end)``.

    ``start`` must be a multiple of the smallest power of two >= ``end - start`` (true of
    every subtree of an RFC 9162 tree); the range is covered by perfect nodes of strictly
    decreasing size, which are then folded right to left.
    """
    count = end - start
    if count <= 0:
        raise MerkleRangeError("empty range")
    if count & (count - 1) == 0:
        level = count.bit_length() - 1
        if start & (count - 1):
            raise MerkleRangeError("range is not aligned")
        return get_node(level, start >> level)
    parts: list[bytes] = []
    pos = start
    for level in range(count.bit_length() - 1, -1, -1):
        if (count >> level) & 1:
            if pos & ((1 << level) - 1):
                raise MerkleRangeError("range is not aligned")
            parts.append(get_node(level, pos >> level))
            pos += 1 << level
    sha = _sha256
    h = parts[-1]
    for i in range(len(parts) - 2, -1, -1):
        h = sha(b"\x01" + parts[i] + h).digest()
    return h


def tree_root(size: int, get_node: NodeSource) -> bytes:
    """Root hash of the tree of the first ``size`` leaves, from perfect nodes."""
    if size < 0:
        raise MerkleRangeError("negative size")
    if size == 0:
        return EMPTY_ROOT
    return subtree_root(0, size, get_node)


def _path(level: int, index: int, size: int, get_node: NodeSource) -> list[bytes]:
    """Sibling hashes from perfect node (level, index) up to the root of a tree of ``size``.

    Bottom-up order, as in RFC 9162 PATH/SUBPROOF: at each level the sibling of the
    current node is a perfect node if it lies left or fully inside the tree, a composed
    right-edge subtree if it is cut by the tree's end, and absent (the node is promoted
    unchanged) if it starts at or beyond ``size``.
    """
    proof: list[bytes] = []
    while not (index == 0 and (1 << level) >= size):
        sib = index ^ 1
        start = sib << level
        if start < size:
            end = start + (1 << level)
            if end <= size:
                proof.append(get_node(level, sib))
            else:
                proof.append(subtree_root(start, size, get_node))
        index >>= 1
        level += 1
    return proof


def inclusion_proof(index: int, size: int, get_node: NodeSource) -> list[bytes]:
    """RFC 9162 inclusion proof (audit path) of leaf ``index`` in the tree of ``size``."""
    if not 0 <= index < size <= _MAX_SIZE:
        raise MerkleRangeError(f"no leaf {index} in a tree of size {size}")
    return _path(0, index, size, get_node)


def consistency_proof(first: int, second: int, get_node: NodeSource) -> list[bytes]:
    """RFC 9162 consistency proof between the trees of sizes ``first`` and ``second``.

    Empty when ``first == second``. ``first == 0`` is refused (nothing to prove, and the
    verifier rejects such proofs).
    """
    if not 0 < first <= second <= _MAX_SIZE:
        raise MerkleRangeError(f"no consistency proof from size {first} to {second}")
    if first == second:
        return []
    # The last perfect node of the first tree: it ends exactly at `first`.
    level = (first & -first).bit_length() - 1
    index = (first - 1) >> level
    proof = _path(level, index, second, get_node)
    if index != 0:  # unless it is the whole first tree, whose root the verifier has
        proof.insert(0, get_node(level, index))
    return proof


# --------------------------------------------------------------------------- verification


def _check_hashes(proof: Sequence[bytes]) -> None:
    for p in proof:
        if len(p) != HASH_SIZE:
            raise InvalidProof("bad_hash_size", "proof hash is not 32 bytes")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check an inclusion proof (RFC 9162 section 2.1.3.2); raise `InvalidProof` if bad."""
    if index < 0 or index >= size:
        raise InvalidProof("index_out_of_range", f"leaf index {index} >= tree size {size}")
    if len(leaf) != HASH_SIZE:
        raise InvalidProof("bad_hash_size", "leaf hash is not 32 bytes")
    _check_hashes(proof)
    sha = _sha256
    fn = index
    sn = size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise InvalidProof("wrong_length", "inclusion proof too long")
        if fn & 1 or fn == sn:
            r = sha(b"\x01" + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = sha(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProof("wrong_length", "inclusion proof too short")
    if r != root:
        raise InvalidProof("root_mismatch", "inclusion proof does not lead to the root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check a consistency proof (RFC 9162 section 2.1.4.2); raise `InvalidProof` if bad."""
    if first < 0 or second < 0:
        raise InvalidProof("size_order", "negative tree size")
    if first > second:
        raise InvalidProof("size_order", f"first size {first} > second size {second}")
    if first == second:
        if proof:
            raise InvalidProof("wrong_length", "proof between equal sizes must be empty")
        if first_root != second_root:
            raise InvalidProof("root_mismatch", "equal sizes with different roots")
        if first == 0 and first_root != EMPTY_ROOT:
            raise InvalidProof("root_mismatch", "empty tree root is not SHA-256('')")
        return
    if first == 0:
        raise InvalidProof("empty_tree", "consistency proof from the empty tree")
    if not proof:
        raise InvalidProof("wrong_length", "empty consistency proof")
    _check_hashes(proof)
    sha = _sha256
    path: Sequence[bytes] = proof
    if first & (first - 1) == 0:  # first is an exact power of two
        path = [first_root, *proof]
    fn = first - 1
    sn = second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for i in range(1, len(path)):
        c = path[i]
        if sn == 0:
            raise InvalidProof("wrong_length", "consistency proof too long")
        if fn & 1 or fn == sn:
            fr = sha(b"\x01" + c + fr).digest()
            sr = sha(b"\x01" + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = sha(b"\x01" + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProof("wrong_length", "consistency proof too short")
    if fr != first_root:
        raise InvalidProof("root_mismatch", "consistency proof does not match the first root")
    if sr != second_root:
        raise InvalidProof("root_mismatch", "consistency proof does not match the second root")


# --------------------------------------------------------------------------- memory store


class MemoryNodeStore:
    """In-memory log: perfect nodes by level, plus a frontier. For tests and the verifier.

    ``levels[l][i]`` is perfect node (l, i); appending a leaf stores exactly the nodes the
    frontier reports as completed, as a database-backed store would.
    """

    __slots__ = ("frontier", "levels")

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = []
        self.frontier = MerkleFrontier()
        for h in leaves:
            self.append(h)

    @property
    def size(self) -> int:
        return self.frontier.size

    def append(self, leaf: bytes) -> int:
        """Append one leaf hash; return its index."""
        index = self.frontier.size
        levels = self.levels
        for level, _i, h in self.frontier.append(leaf):
            if level == len(levels):
                levels.append([])
            levels[level].append(h)
        return index

    def get_node(self, level: int, index: int) -> bytes:
        if level < 0 or index < 0:
            raise MerkleRangeError(f"no perfect node ({level}, {index})")
        try:
            return self.levels[level][index]
        except IndexError:
            raise MerkleRangeError(f"no perfect node ({level}, {index})") from None

    def root(self, size: int | None = None) -> bytes:
        if size is None or size == self.frontier.size:
            return self.frontier.root()
        if not 0 <= size <= self.frontier.size:
            raise MerkleRangeError(f"no tree of size {size}")
        return tree_root(size, self.get_node)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        n = self.frontier.size if size is None else size
        if n > self.frontier.size:
            raise MerkleRangeError(f"no tree of size {n}")
        return inclusion_proof(index, n, self.get_node)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        n = self.frontier.size if second is None else second
        if n > self.frontier.size:
            raise MerkleRangeError(f"no tree of size {n}")
        return consistency_proof(first, n, self.get_node)
