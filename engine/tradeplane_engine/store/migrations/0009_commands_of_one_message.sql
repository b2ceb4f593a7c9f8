-- A command-stream message may hold several commands (docs/protocol.md), which share
-- its sequence: each is told apart by its index among them (0 for a command alone in
-- its message). Each command is journaled once, its events and rejections by their
-- place among its events.
ALTER TABLE journal ADD COLUMN index integer NOT NULL DEFAULT 0;
ALTER TABLE journal DROP CONSTRAINT journal_pkey;
ALTER TABLE journal ADD PRIMARY KEY (market, sequence, index);

ALTER TABLE order_history ADD COLUMN index integer NOT NULL DEFAULT 0;
ALTER TABLE order_history DROP CONSTRAINT order_history_pkey;
ALTER TABLE order_history ADD PRIMARY KEY (market, sequence, index, position);

ALTER TABLE rejections ADD COLUMN index integer NOT NULL DEFAULT 0;
ALTER TABLE rejections DROP CONSTRAINT rejections_pkey;
ALTER TABLE rejections ADD PRIMARY KEY (market, sequence, index, position);
