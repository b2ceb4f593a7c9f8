-- What a rejection refused: the command's type (place, cancel, replace, cancelAll, ...).
-- Only a refused place is an order of its own (a new order that ended rejected); a
-- refused cancel or replace names another order and is not that order's state. NULL on
-- rows recorded before the engine said which command it refused.

ALTER TABLE rejections ADD COLUMN command text;
