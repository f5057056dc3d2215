-- Retired accounts: closed at zero for good (the escrow, entitlement and token accounts
-- of a settled instrument), so that start-up does not load them.
--
-- An entry table (append-only): a row says that the account of `account_id` was
-- retired when the ledger's next index was `retired_idx` (every transaction before it
-- came first; none after it touches the account). The account keeps its row in
-- ledger_accounts, so the audit, the export and statements read its history as before,
-- and the unique (owner, asset, kind) there refuses to open it again under a new id.
-- Start-up (ledger.store.load_state) skips the accounts retired by its snapshot's
-- index; those retired after it (found by the index on retired_idx) are replayed,
-- checked to be at zero and then dropped. A retired account's row in ledger_balances is deleted by
-- the next snapshot (the table is the snapshot, not the journal).
CREATE TABLE ledger_retired_accounts (
    account_id  bigint PRIMARY KEY,
    retired_idx bigint NOT NULL CHECK (retired_idx >= 0)
);
CREATE INDEX ledger_retired_accounts_idx ON ledger_retired_accounts (retired_idx);

SELECT ledger_make_append_only('ledger_retired_accounts'::regclass);
