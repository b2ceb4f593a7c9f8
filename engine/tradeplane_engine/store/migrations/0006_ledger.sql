-- The ledger's double-entry journal and balances (docs/ledger.md#postgresql), written by
-- the ledger recorder from each shard's events stream, one transaction per batch.
-- Amounts are integers in their asset's smallest unit, never floats.

-- One row per Movement: a change of one account's available and held amounts of one
-- asset. The rows of one command sum to zero per asset (the system accounts $world,
-- $clearing and $fees included).
CREATE TABLE ledger_journal (
    shard            integer NOT NULL,
    sequence         bigint NOT NULL,         -- the ledger command's sequence in its shard
    index            integer NOT NULL,        -- the movement's place among the command's events
    stream_sequence  bigint NOT NULL,         -- the events message's place in its stream
    kind             text NOT NULL,           -- deposit, withdrawal, hold, release, trade, fee
    account          text NOT NULL,
    asset            text NOT NULL,
    available_delta  numeric(40, 0) NOT NULL,
    held_delta       numeric(40, 0) NOT NULL,
    market           text NOT NULL DEFAULT '',
    order_id         bigint NOT NULL DEFAULT 0,
    reference        text NOT NULL DEFAULT '',  -- transfer id, or client order id of a hold
    sequenced_at     bigint NOT NULL,         -- nanoseconds since the epoch
    PRIMARY KEY (shard, sequence, index)
);
CREATE INDEX ledger_journal_account ON ledger_journal (account, sequence DESC, index DESC);

-- Each account's balances as the journal sums them, kept in the journal's transaction.
-- The system accounts exist once per shard, so the shard is part of the key.
CREATE TABLE ledger_balances (
    shard      integer NOT NULL,
    account    text NOT NULL,
    asset      text NOT NULL,
    available  numeric(40, 0) NOT NULL,
    held       numeric(40, 0) NOT NULL,
    sequence   bigint NOT NULL,               -- the last command that moved it
    PRIMARY KEY (shard, account, asset)
);
CREATE INDEX ledger_balances_account ON ledger_balances (account);

-- Where each shard's recording stands: the last events message recorded (journaled or
-- quarantined) and the last command sequence journaled. Moved in the batch's
-- transaction, only from where it was, so a batch is recorded once.
CREATE TABLE ledger_positions (
    shard            integer PRIMARY KEY,
    stream_sequence  bigint NOT NULL,
    sequence         bigint NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Ledger events messages the recorder refused (not a ledger batch, another shard's, or
-- not the next command's), kept whole with the reason and stepped over.
CREATE TABLE ledger_quarantine (
    shard            integer NOT NULL,
    stream_sequence  bigint NOT NULL,
    payload          bytea NOT NULL,
    reason           text NOT NULL,
    quarantined_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard, stream_sequence)
);
