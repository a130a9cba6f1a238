-- Which version of its event type's component formatted an event's message
-- (`describe().version`), as the webhook body says: the latest attempt that
-- got a message writes it, and an attempt whose plugin failed leaves it as it
-- was. NULL until an attempt formatted a message.
--
-- Added to both tables, last, so their columns stay in the same order: rows
-- move between them, and `all_events` is their positional union.
ALTER TABLE events ADD COLUMN event_type_version text;
ALTER TABLE event_history ADD COLUMN event_type_version text;

-- A view's `*` is expanded when the view is made, so `all_events` is made
-- again to carry the new column. Dropped and created rather than replaced:
-- that does not depend on the column list the view had before.
DROP VIEW all_events;
CREATE VIEW all_events AS
    SELECT * FROM events
    UNION ALL
    SELECT * FROM event_history;
