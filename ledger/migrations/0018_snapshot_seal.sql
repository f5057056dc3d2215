-- The balance snapshot is sealed: signed by the exchange's checkpoint key.
--
-- ledger_balances and ledger_hold_state are the snapshot start-up loads before it
-- replays the journal after ledger_snapshot.next_index. They are rewritten by every
-- snapshot, so the exchange's own database role may UPDATE and DELETE them: an edit
-- made with those credentials alone would otherwise become spendable at the next start.
-- Each snapshot now signs (next_index, SHA-256 of the balance rows, SHA-256 of the
-- open hold rows) with the key that signs the checkpoints (ledger.seal); start-up
-- checks it and, if it does not hold (or there is none: a snapshot written before this
-- migration), ignores the snapshot and rebuilds from the journal alone, then seals a
-- full snapshot. A later migration that edits these tables voids the seal the same way.
ALTER TABLE ledger_snapshot
    ADD COLUMN seal_key text,   -- the verifier key string that signed it
    ADD COLUMN seal     bytea;  -- Ed25519 signature of ledger.seal.SnapshotDigest.message()
