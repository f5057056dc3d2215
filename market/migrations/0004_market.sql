-- The market: instruments, the sequencer's journal, orders and fills.
--
-- market_journal is the sequencer's command journal: every command it fed to
-- the matching engine (and every instrument it listed), in order, with the
-- time and ids the sequencer assigned. Replaying it through the engine
-- rebuilds the books exactly. It is append-only, like the ledger.
-- market_fills records every trade (append-only). market_orders is the
-- queryable state of every order, rewritten by the sequencer in the same
-- database transaction as the batch that changed it.

CREATE TABLE market_instruments (
    symbol           text PRIMARY KEY,
    model            text    NOT NULL,
    window_start     bigint  NOT NULL,
    duration         bigint  NOT NULL,
    lot_size         bigint  NOT NULL CHECK (lot_size > 0),
    tick_size        bigint  NOT NULL CHECK (tick_size > 0),
    price_min        bigint  NOT NULL,
    price_max        bigint  NOT NULL,
    maker_fee_bps    integer NOT NULL CHECK (maker_fee_bps BETWEEN 0 AND 10000),
    taker_fee_bps    integer NOT NULL CHECK (taker_fee_bps BETWEEN 0 AND 10000),
    provider_fee_bps integer NOT NULL CHECK (provider_fee_bps BETWEEN 0 AND 10000),
    currency         text    NOT NULL,
    created_ms       bigint  NOT NULL
);

CREATE TABLE market_journal (
    seq     bigint PRIMARY KEY CHECK (seq >= 0),
    time_ms bigint NOT NULL,
    body    bytea  NOT NULL
);

CREATE TABLE market_orders (
    order_id           bigint PRIMARY KEY,
    account_id         text    NOT NULL,
    client_order_id    text    NOT NULL,
    request_digest     bytea   NOT NULL,
    instrument         text    NOT NULL,
    side               text    NOT NULL,
    order_type         text    NOT NULL,
    tif                text,
    price              bigint,
    quantity           bigint  NOT NULL,
    open_quantity      bigint  NOT NULL,
    filled_quantity    bigint  NOT NULL,
    cancelled_quantity bigint  NOT NULL,
    status             text    NOT NULL
        CHECK (status IN ('open', 'filled', 'cancelled', 'expired', 'rejected')),
    reject_reason      text,
    hold_id            text,
    expire_at          bigint,
    created_ms         bigint  NOT NULL,
    updated_ms         bigint  NOT NULL,
    UNIQUE (account_id, client_order_id),
    CHECK (filled_quantity + open_quantity + cancelled_quantity <= quantity)
);

CREATE INDEX market_orders_open ON market_orders (account_id, instrument) WHERE status = 'open';

CREATE TABLE market_fills (
    instrument     text   NOT NULL,
    seq            bigint NOT NULL,
    time_ms        bigint NOT NULL,
    maker_order_id bigint NOT NULL,
    taker_order_id bigint NOT NULL,
    maker_account  text   NOT NULL,
    taker_account  text   NOT NULL,
    aggressor_side text   NOT NULL,
    price          bigint NOT NULL,
    quantity       bigint NOT NULL,
    buyer_fee      bigint NOT NULL,
    PRIMARY KEY (instrument, seq)
);

CREATE INDEX market_fills_maker ON market_fills (maker_account, time_ms);
CREATE INDEX market_fills_taker ON market_fills (taker_account, time_ms);
CREATE INDEX market_fills_time ON market_fills (instrument, time_ms);

SELECT ledger_make_append_only(t)
  FROM unnest(ARRAY['market_instruments', 'market_journal', 'market_fills']::regclass[]) AS t;
