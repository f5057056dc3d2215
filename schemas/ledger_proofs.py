"""Wire forms of Merkle proofs (RFC 9162), as served by the API and in audit exports.

Hashes are raw 32-byte SHA-256 digests (base64 in JSON, as msgspec encodes ``bytes``),
ordered bottom-up exactly as `ledger.merkle` produces and verifies them.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

Hash = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
TreeSize = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]  # msgspec bounds are int64
# The longest possible proof in a tree of under 2**64 leaves has 64 hashes (+1 for a
# consistency proof's leading subtree hash).
ProofHashes = Annotated[list[Hash], msgspec.Meta(max_length=65)]


class InclusionProof(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Proof that leaf ``leaf_index`` is in the tree of ``tree_size`` leaves."""

    leaf_index: TreeSize
    tree_size: TreeSize
    hashes: ProofHashes


class ConsistencyProof(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Proof that the tree of ``second`` leaves extends the tree of ``first`` leaves."""

    first: TreeSize
    second: TreeSize
    hashes: ProofHashes
