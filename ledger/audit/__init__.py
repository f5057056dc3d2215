"""The audit file: export (from the database) and offline verification (no database).

Three modules, so that verifying needs no database driver:

- `ledger.audit.records`: the file's records and frames, and `AuditFailure` (no I/O);
- `ledger.audit.export`: `export`, the file of a range of the ledger, read from PostgreSQL;
- `ledger.audit.verify`: `verify_file`, offline; it imports neither asyncpg nor `export`.

File format ``tokex-audit/v3``
------------------------------
(v2 added the receipts records, v3 the "entries" balances; a file of another version is
refused, saying which.) The magic line ``TOKEX-AUDIT/3\\n``, then frames: a
4-byte big-endian length and one MessagePack record (msgspec, structs as arrays, the first
element naming the record)::

    header      format, origin, from_index, to_index, frontier (the Merkle frontier of the
                tree of from_index leaves, `MerkleFrontier.to_bytes`; empty tree for 0)
    keys        every checkpoint key: verifier key string, valid_from_size, announced_in_tx
    balances*   "opening" balances at from_index (only when from_index > 0), in chunks
    entries     start index and the canonical bytes of up to 1000 consecutive transactions
    checkpoint  a signed checkpoint note, right after the entry that completes its tree
    ...         (entries and checkpoints interleaved, in index order)
    balances*   "closing" balances at to_index (at the end: as the writer recovers them), in chunks
    balances*   "entries": per account, the sums of the range's rows in ``ledger_entries``
                (one grouped query), the table the settlement reports read, in chunks
    receipts*   the receipts of each gateway delivery in the range (`ledger.receipts`), by
                delivery in index order: transaction id, first leaf, up to 1000 canonical
                receipts (only when the exporter is given a `ReceiptSource`)
    end         counts, and the SHA-256 of every byte of the file before this frame

Balance rows are ``(owner, asset, kind, available, held)``, sorted (ascending, by the whole
row, across the chunks of one kind), non-zero only. The
export ends at a checkpoint (``to_index`` is rounded down to the largest checkpoint size not
above it), so every exported entry is under a signature. It is written in constant memory
(windows of `WINDOW` entries in one REPEATABLE READ snapshot) and is a pure function of the
ledger and the range: rerunning it gives the same bytes.

Verification (`ledger.audit.verify.verify_file`)
----------------------------
Streaming, in one pass, and stopping at the first problem (`AuditFailure`, which says
where: ``entry 123``, ``checkpoint 456``, ``header``...):

- every entry decodes, has the next index, sums to zero per asset (both buckets together),
  and has an id no earlier entry of the range has ("transaction id repeated": ids are
  unique in a ledger; the set of ids seen is kept, some 100 bytes an entry);
- the floor: after each entry, no account it touched that may not go negative
  (`ledger.accounts.may_go_negative`: every kind but the system ones) is below zero on
  either bucket, and no opening balance of one is;
- every checkpoint comes exactly where the recomputed tree reaches its size, has the
  header's origin, is signed by the key valid at its size, and its root equals the root
  recomputed from the entries; sizes grow, times never go backwards and are not earlier
  than any entry before them. All roots come from one append-only sequence of leaves, so
  each checkpoint is consistent with the one before (the same tree, extended);
- keys: trust starts at ``--public-key`` (or, without one, the export's first key, which
  the report says). A later key is trusted only from a ``key_rotation`` entry, signed by
  the key before it (`ledger.keys.check_rotation`), that the key list agrees with;
- the balances recomputed from the (opening balances and the) entries equal the exported
  closing balances;
- the "entries" rows equal what the signed entries moved per account (the recomputed
  closing balances less the opening ones): the reports read ``ledger_entries``, not the
  signed bodies, so a row of that table altered under an untouched signature (by a
  database superuser, triggers off) fails here, ``ledger entries: account
  owner|asset|kind: ...``. Sums per account over the range: an alteration that leaves
  every account's sum over the range as it was (amounts moved between two transactions
  of one account) is not seen, nor one before a partial export's start;
- every gateway delivery (a ``delivery`` whose metadata commits to receipts) has its
  receipts, in order, and they match what it commits to (`ledger.receipts.check_receipts`:
  count, total, weight, parties, root, and the tokens its entries burned; no negative
  token count, no end before the start; the commitment's fields in the one spelling
  `Commitment.metadata` writes); a failure names ``delivery <tx id> (entry N)``. No
  receipt is in two deliveries;
- the end record's counts and file digest match, and nothing follows it;
- checkpoints the auditor trusts from before (`verify_file`'s ``checkpoints``): the file
  alone cannot show that the exchange signed this history for everybody (checkpoints
  before its last may be left out, so a fork signed for someone else need not show).
  Each is signed by a key the export accepts; the root the entries give at its size is
  its root (the roots at those sizes are kept as the tree is recomputed; one at or before
  a partial export's start is read off the starting frontier when that holds its size,
  else it is reported unchecked); one beyond the export's end is refused (a fork or a
  rollback).

A root mismatch cannot say which entry of the range was altered (only the checkpoints are
signed), so it names the range and the checkpoint. For ``from_index > 0`` the opening
balances are not covered by any signature and are taken as given; the frontier is
(a wrong one cannot reproduce a signed root).
"""
