-- The verifiable log over the ledger (see ledger/log.py and DESIGN.md "Signing and audit").
--
--   ledger_merkle_nodes  every perfect node of the RFC 9162 tree over the canonical bytes of
--                        ledger_transactions: level 0 are the leaf hashes, level l index i
--                        covers leaves [i * 2^l, (i + 1) * 2^l). Written once, when complete.
--   ledger_checkpoints   the signed checkpoint (C2SP signed note) of every batch, by size.
--   ledger_keys          every key that ever signed checkpoints: the first one, then each
--                        one announced by a key_rotation transaction signed by its predecessor.
--
-- All three are append-only, like the entry tables of 0001: written by the single writer in
-- the same database transaction as the batch they cover.

CREATE TABLE ledger_merkle_nodes (
    level smallint NOT NULL CHECK (level BETWEEN 0 AND 63),
    idx   bigint   NOT NULL CHECK (idx >= 0),
    hash  bytea    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);

CREATE TABLE ledger_checkpoints (
    tree_size bigint PRIMARY KEY CHECK (tree_size > 0),
    note      text   NOT NULL,
    root      bytea  NOT NULL CHECK (length(root) = 32),
    time_ms   bigint NOT NULL,
    -- The verifier key string (<name>+<key id>+<key>) of the key that signed the note.
    key       text   NOT NULL
);

CREATE TABLE ledger_keys (
    -- The verifier key string: <name>+<8 hex digit key id>+<base64(0x01 || public key)>.
    key             text   PRIMARY KEY,
    name            text   NOT NULL,
    key_id          bigint NOT NULL,
    public_key      bytea  NOT NULL CHECK (length(public_key) = 32),
    -- Checkpoints of this size and larger are signed by this key (until the next one's).
    valid_from_size bigint NOT NULL UNIQUE CHECK (valid_from_size >= 0),
    -- Index of the key_rotation transaction that announced it; NULL for the first key.
    announced_in_tx bigint UNIQUE
);

SELECT ledger_make_append_only(t)
  FROM unnest(ARRAY['ledger_merkle_nodes', 'ledger_checkpoints', 'ledger_keys']::regclass[]) AS t;
