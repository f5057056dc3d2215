-- The double-entry ledger.
--
-- Entry tables (append-only: rows are only ever inserted):
--   ledger_accounts      every account ever used, with its numeric id
--   ledger_transactions  every committed transaction at its leaf index, with its canonical bytes
--   ledger_entries       the signed amounts per account and bucket that balances are made of
--   ledger_holds         the creation of every two-phase hold
--   ledger_rejections    every rejected transaction id (a failed id stays failed)
-- Snapshot tables (written by the single writer every so many transactions;
-- start-up loads them and replays the journal of transactions after them):
--   ledger_snapshot      the index the snapshot is current to (one row)
--   ledger_balances      available and held per account
--   ledger_hold_state    what each hold still reserves
--
-- Amounts are bigint: no float ever touches money or tokens. There are no
-- foreign keys on the entry tables: the one writer checks every reference in
-- memory before it writes, and a foreign key would add a trigger per row to
-- the bulk COPY of every batch.

CREATE TABLE ledger_accounts (
    id              bigint PRIMARY KEY,
    owner           text    NOT NULL,
    asset           text    NOT NULL,
    kind            text    NOT NULL,
    may_go_negative boolean NOT NULL,
    UNIQUE (owner, asset, kind)
);

CREATE TABLE ledger_transactions (
    idx            bigint PRIMARY KEY CHECK (idx >= 0),
    tx_id          text   NOT NULL UNIQUE,
    code           text   NOT NULL,
    time_ms        bigint NOT NULL,
    request_digest bytea  NOT NULL,
    body           bytea  NOT NULL
);

CREATE TABLE ledger_entries (
    tx_idx     bigint   NOT NULL,
    n          smallint NOT NULL,
    account_id bigint   NOT NULL,
    bucket     smallint NOT NULL CHECK (bucket IN (0, 1)),
    amount     bigint   NOT NULL CHECK (amount <> 0)
);

-- No primary key: (tx_idx, n) is unique by construction (idx is the primary
-- key of ledger_transactions, n the position in its body), and a second index
-- on the hottest table costs a fifth of the batch write. Statements read by account.
CREATE INDEX ledger_entries_account ON ledger_entries (account_id, tx_idx);

CREATE TABLE ledger_holds (
    hold_id     text   PRIMARY KEY,
    account_id  bigint NOT NULL,
    amount      bigint NOT NULL CHECK (amount > 0),
    expires_at  bigint,
    created_idx bigint NOT NULL
);

CREATE TABLE ledger_rejections (
    tx_id          text   PRIMARY KEY,
    request_digest bytea  NOT NULL,
    code           text   NOT NULL,
    message        text   NOT NULL,
    time_ms        bigint NOT NULL
);

CREATE TABLE ledger_snapshot (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    next_index bigint  NOT NULL CHECK (next_index >= 0)
);
INSERT INTO ledger_snapshot (next_index) VALUES (0);

CREATE TABLE ledger_balances (
    account_id      bigint  PRIMARY KEY,
    available       bigint  NOT NULL,
    held            bigint  NOT NULL,
    may_go_negative boolean NOT NULL,
    -- The floor rule, enforced by the database as well as by the writer.
    CHECK (may_go_negative OR (available >= 0 AND held >= 0))
) WITH (fillfactor = 50);  -- room for HOT updates: snapshots rewrite touched rows

CREATE TABLE ledger_hold_state (
    hold_id   text   PRIMARY KEY,
    remaining bigint NOT NULL CHECK (remaining >= 0)
) WITH (fillfactor = 50);

-- Append-only in the database itself: whoever connects, however, an UPDATE,
-- DELETE or TRUNCATE of an entry table fails.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'tokex ledger table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- Make a table append-only: a row trigger refuses UPDATE and DELETE, a statement
-- trigger refuses TRUNCATE, and PUBLIC loses those rights. Later migrations call it
-- for their own entry tables.
CREATE FUNCTION ledger_make_append_only(t regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    name text := (SELECT relname FROM pg_class WHERE oid = t);
BEGIN
    EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON %s
                    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()',
                   name || '_append_only', t);
    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()',
                   name || '_no_truncate', t);
    EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON %s FROM PUBLIC', t);
END;
$$;

SELECT ledger_make_append_only(t)
  FROM unnest(ARRAY['ledger_accounts', 'ledger_transactions', 'ledger_entries',
                    'ledger_holds', 'ledger_rejections']::regclass[]) AS t;
