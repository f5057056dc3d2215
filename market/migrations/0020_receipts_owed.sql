-- Receipts durable before their charge (market/gateway/journal.py).
--
-- A metered call's receipt is written at the call's end by the receipt journal, in a
-- commit of its own (several may be in flight at once, so a call's end waits for one
-- commit, never for the ledger's batch in flight); the sequencer charges it afterwards,
-- in a delivery transaction (`GatewayChargeOp`), as before.
--
-- gateway_receipts_owed: one row per journaled receipt whose charge has not committed
--     yet, written in the same statement as the receipt, deleted by the sequencer in the
--     statement of the batch that charges it (or finds it charged already, or charges it
--     nothing, or refuses it). A row left when the exchange restarts (or when a gateway
--     process of `serve --workers N` is gone: `instance_id`, as in gateway_calls) is a
--     receipt whose charge a crash cut: it is charged then (market/gateway/progress.py).
-- gateway_receipts.seq: with several journal commits in flight, a receipt may commit
--     after one with a greater number; `GET /v1/receipts` lists them newest first, so a
--     walk begun before such a receipt committed does not see it, as it does not see any
--     receipt committed after it began.

CREATE TABLE gateway_receipts_owed (
    receipt_id  text PRIMARY KEY CHECK (receipt_id ~ '^rcp_[0-9a-f]{24}$'),
    instance_id text NOT NULL DEFAULT ''
);
CREATE INDEX gateway_receipts_owed_instance ON gateway_receipts_owed (instance_id);
