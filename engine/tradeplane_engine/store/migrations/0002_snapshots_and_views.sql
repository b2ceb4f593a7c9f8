-- Engine snapshots (recovery without a full replay) and decimal views for people.

CREATE TABLE snapshots (
    market         text NOT NULL,
    sequence       bigint NOT NULL,        -- the last command the state includes
    book_sequence  bigint NOT NULL,        -- the last command that changed the book
    state          bytea NOT NULL,         -- Engine.snapshot(): canonical MessagePack
    state_hash     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (market, sequence)
);

CREATE VIEW orders_decimal AS
SELECT o.market, o.order_id, o.account, o.client_order_id, o.side, o.order_type,
       o.time_in_force, o.post_only, o.price * m.tick_size AS price,
       o.quantity * m.lot_size AS quantity, o.status, o.filled * m.lot_size AS filled,
       o.remaining * m.lot_size AS remaining, o.reason, o.created_sequence,
       o.updated_sequence
FROM orders o JOIN markets m USING (market);

CREATE VIEW trades_decimal AS
SELECT t.market, t.trade_id, t.sequence, to_timestamp(t.traded_at / 1e9) AS traded_at,
       t.price * m.tick_size AS price, t.quantity * m.lot_size AS quantity,
       t.aggressor_side, t.maker_order_id, t.maker_account, t.taker_order_id,
       t.taker_account
FROM trades t JOIN markets m USING (market);
