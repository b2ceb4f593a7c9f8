-- Trader accounts: who may connect to NATS as a trader (docs/security.md). Only the
-- secret's SHA-256 is stored; a revoked account keeps its row.
CREATE TABLE accounts (
    account       text PRIMARY KEY,
    secret_sha256 bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
