-- Accounts of the exchange and their Ed25519 request-signing keys (see market/auth.py).
--
--   accounts       one row per account; the role never changes.
--   account_keys   the keys an account signs requests with; a key is revoked by setting
--                  revoked_at (rows are kept, so a key id is never reused).
--
-- Ids are random and prefixed: acc_<16 hex>, key_<16 hex>. A public key belongs to one
-- account only, so a signature always names a single principal.

CREATE TABLE accounts (
    account_id text PRIMARY KEY CHECK (account_id ~ '^acc_[0-9a-f]{16}$'),
    role       text NOT NULL CHECK (role IN ('operator', 'provider', 'buyer', 'auditor')),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE account_keys (
    key_id     text PRIMARY KEY CHECK (key_id ~ '^key_[0-9a-f]{16}$'),
    account_id text NOT NULL REFERENCES accounts (account_id),
    public_key bytea NOT NULL UNIQUE CHECK (length(public_key) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE INDEX account_keys_account_idx ON account_keys (account_id);
