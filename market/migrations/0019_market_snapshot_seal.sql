-- The books' snapshots are sealed: signed by the exchange's checkpoint key.
--
-- market_snapshots is derived data the exchange's own database role may INSERT and
-- DELETE (every snapshot prunes the older ones), and recovery loaded the newest row
-- unchecked: a forged row could hold resting orders no hold backs. Each snapshot now
-- signs (journal_seq, time_ms, format, SHA-256 of the engine bytes) with the key that
-- signs the checkpoints (market.snapshots.seal_message); recovery skips a row whose seal
-- does not verify (or that has none: one written before this migration) and replays
-- the journal from the next sealed one, or from its first row.
ALTER TABLE market_snapshots
    ADD COLUMN seal_key text,   -- the verifier key string that signed it
    ADD COLUMN seal     bytea;  -- Ed25519 signature of market.snapshots.seal_message()
