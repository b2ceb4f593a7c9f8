-- Snapshots of each ledger shard (docs/ledger.md), taken by the recorder's ledger
-- snapshotter every so many ledger commands: a restarted ledger replica starts from the
-- newest one it may use and replays its shard's command stream from the next sequence.
CREATE TABLE ledger_snapshots (
    shard       integer NOT NULL,
    sequence    bigint NOT NULL,     -- the last ledger command the state includes
    state       bytea NOT NULL,      -- Ledger.snapshot(): canonical JSON
    state_hash  text NOT NULL,       -- its SHA-256: Ledger.state_hash()
    taken_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard, sequence)
);
