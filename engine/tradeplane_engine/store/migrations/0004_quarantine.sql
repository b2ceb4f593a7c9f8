-- Events-stream messages the recorder could not read: only an engine publishes to a
-- market's events stream, so one of these was written by someone else (or by a defect).
-- Kept whole, with why it was refused, and stepped over: the recorder's position is the
-- last message it journaled or quarantined, so one bad message never stops it.

CREATE TABLE quarantine (
    market text NOT NULL,
    stream_sequence bigint NOT NULL,
    payload bytea NOT NULL,
    reason text NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (market, stream_sequence)
);
