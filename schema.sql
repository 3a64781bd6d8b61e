-- shop: all DDL, idempotent. Each service applies its own section at start-up (common/db/database.py).
-- Money is NUMERIC(14,2): exact, two decimals, up to 999,999,999,999.99.

-- [shared]
-- Each service keeps, in its own database, the results of requests sent with an Idempotency-Key:
-- a retried request with the same key gets the stored result instead of acting twice. Keys are per caller
-- (`principal`: the token's subject; '' with AUTH_MODE=off).
CREATE TABLE IF NOT EXISTS idempotency_keys (
    principal   TEXT NOT NULL DEFAULT '',
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    result      TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (principal, key)
);
-- Databases from before keys were per caller: their keys become the open API's ('').
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'idempotency_keys' AND column_name = 'principal') THEN
        ALTER TABLE idempotency_keys ADD COLUMN principal TEXT NOT NULL DEFAULT '';
        ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
        ALTER TABLE idempotency_keys ADD PRIMARY KEY (principal, key);
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS idempotency_keys_age ON idempotency_keys (created_at);

-- [order_svc]
CREATE TABLE IF NOT EXISTS orders (
    order_id    BIGSERIAL PRIMARY KEY,
    user_id     BIGINT NOT NULL CHECK (user_id > 0),
    amount      NUMERIC(14, 2) NOT NULL CHECK (amount > 0),
    description TEXT NOT NULL DEFAULT '',
    status      TEXT NOT NULL DEFAULT 'NEW' CHECK (status IN ('NEW', 'FINISHED', 'CANCELLED')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, order_id);

-- One row per order until the Payments Service's answer arrives; re-sent with backoff meanwhile.
CREATE TABLE IF NOT EXISTS outbox_os (
    order_id        BIGINT PRIMARY KEY REFERENCES orders (order_id),
    user_id         BIGINT NOT NULL,
    amount          NUMERIC(14, 2) NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    traceparent     TEXT
);
CREATE INDEX IF NOT EXISTS outbox_os_due ON outbox_os (next_attempt_at);
-- The W3C trace context of the request that placed the order, sent with every (re)send; NULL with tracing off
-- (docs/operations.md "Tracing"). Databases created before it existed get it here.
ALTER TABLE outbox_os ADD COLUMN IF NOT EXISTS traceparent TEXT;

-- [payment_svc]
CREATE TABLE IF NOT EXISTS accounts (
    user_id    BIGINT PRIMARY KEY CHECK (user_id > 0),
    balance    NUMERIC(14, 2) NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- Every payment request ever received, by order: the record that makes debits exactly-once.
CREATE TABLE IF NOT EXISTS inbox (
    order_id     BIGINT PRIMARY KEY,
    user_id      BIGINT NOT NULL,
    amount       NUMERIC(14, 2) NOT NULL CHECK (amount > 0),
    status       TEXT NOT NULL DEFAULT 'NEW' CHECK (status IN ('NEW', 'FINISHED', 'CANCELLED')),
    acked        BOOLEAN NOT NULL DEFAULT false,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    processed_at TIMESTAMPTZ,
    traceparent  TEXT
);
CREATE INDEX IF NOT EXISTS inbox_unacked ON inbox (user_id, order_id) WHERE NOT acked;
-- The trace context of the latest request message's processing (NULL with tracing off): its settling, by the
-- consumer or the inbox worker, continues that trace. Databases created before it existed get it here.
ALTER TABLE inbox ADD COLUMN IF NOT EXISTS traceparent TEXT;

-- A payment result until the broker confirmed it. The consumer publishes the results it settles itself, right
-- after its commit, so it writes them due for the relay only a resend delay later (`next_attempt_at`).
CREATE TABLE IF NOT EXISTS outbox_ps (
    id              BIGSERIAL PRIMARY KEY,
    order_id        BIGINT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('FINISHED', 'CANCELLED')),
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    traceparent     TEXT
);
-- Databases created before next_attempt_at existed.
ALTER TABLE outbox_ps ADD COLUMN IF NOT EXISTS next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp();
-- The trace context of the result's settling, sent with the result (NULL with tracing off); older databases.
ALTER TABLE outbox_ps ADD COLUMN IF NOT EXISTS traceparent TEXT;

-- The ledger: one row per change of a balance, written in the transaction that changes it, so that for every
-- account balance = sum(credit) - sum(debit). A debit names its order, and an order can be debited only once
-- (the partial unique index). `request_key` is a top-up's Idempotency-Key, else the request id the gateway gave
-- it; `client_request_id` the X-Request-ID its client sent, if any (a label, never trusted as a key);
-- `principal` who topped up (the token's subject; '' with AUTH_MODE=off; NULL on rows from before).
-- Introduced after accounts existed: the DO block creates the table once, and in the same step gives every
-- account with money in it an opening credit for its balance, so the equation holds for older data too.
DO $$
BEGIN
    IF to_regclass('account_movements') IS NULL THEN
        CREATE TABLE account_movements (
            id          BIGSERIAL PRIMARY KEY,
            user_id     BIGINT NOT NULL REFERENCES accounts (user_id),
            kind        TEXT NOT NULL CHECK (kind IN ('credit', 'debit')),
            amount      NUMERIC(14, 2) NOT NULL CHECK (amount > 0),
            balance     NUMERIC(14, 2) NOT NULL CHECK (balance >= 0),
            order_id    BIGINT,
            request_key TEXT,
            created_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
            CHECK ((kind = 'debit') = (order_id IS NOT NULL))
        );
        INSERT INTO account_movements (user_id, kind, amount, balance, request_key)
            SELECT user_id, 'credit', balance, balance, 'opening balance' FROM accounts WHERE balance > 0
            ORDER BY user_id;
    END IF;
END $$;
CREATE UNIQUE INDEX IF NOT EXISTS account_movements_one_debit_per_order ON account_movements (order_id)
    WHERE kind = 'debit';
CREATE INDEX IF NOT EXISTS account_movements_by_user ON account_movements (user_id, id);
ALTER TABLE account_movements ADD COLUMN IF NOT EXISTS principal TEXT;
ALTER TABLE account_movements ADD COLUMN IF NOT EXISTS client_request_id TEXT;
