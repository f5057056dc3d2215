-- Receipts as evidence of the gateway's deliveries, and the completion-token weight.
--
-- gateway_delivery_receipts: which receipts a gateway delivery transaction charged, in the
--     order of its receipt tree (`position` = leaf index; see ledger/receipts.py). The
--     transaction's signed body commits to their count, token total and Merkle root, so
--     `tokex audit verify` and `GET /v1/receipts/{id}/proof` are read from here.
--     Append-only (ledger_make_append_only: no UPDATE, DELETE or TRUNCATE).
-- gateway_receipts.seq: the order receipts were committed in (one writer, the sequencer:
--     a later batch's receipts have greater numbers), the stable order and cursor of
--     `GET /v1/receipts`. Also TRUNCATE of gateway_receipts is now refused, as for the
--     ledger's tables (0008 refused UPDATE and DELETE only).
-- market_instruments.completion_weight: charged tokens = prompt + weight * completion
--     (1: both count alike, the upstream's total_tokens). A term of the instrument, set
--     at creation like its fees.

CREATE TABLE gateway_delivery_receipts (
    transaction_id text    NOT NULL,
    position       integer NOT NULL CHECK (position >= 0),
    receipt_id     text    NOT NULL UNIQUE,
    PRIMARY KEY (transaction_id, position)
);

SELECT ledger_make_append_only('gateway_delivery_receipts'::regclass);

ALTER TABLE gateway_receipts ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;
CREATE UNIQUE INDEX gateway_receipts_seq_idx ON gateway_receipts (seq);
CREATE INDEX gateway_receipts_buyer_seq_idx ON gateway_receipts (buyer, seq);
CREATE INDEX gateway_receipts_provider_seq_idx ON gateway_receipts (provider, seq);

CREATE TRIGGER gateway_receipts_no_truncate BEFORE TRUNCATE ON gateway_receipts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
REVOKE UPDATE, DELETE, TRUNCATE ON gateway_receipts FROM PUBLIC;

ALTER TABLE market_instruments
    ADD COLUMN completion_weight integer NOT NULL DEFAULT 1
        CHECK (completion_weight BETWEEN 1 AND 1000);
