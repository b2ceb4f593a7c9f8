-- An events message covers consecutive commands (docs/failover.md), so several journal
-- rows share the message's stream sequence: its index is no longer unique. Each command
-- is still journaled once (the primary key, (market, sequence)).
DROP INDEX journal_stream_position;
CREATE INDEX journal_stream_position ON journal (market, stream_sequence);
