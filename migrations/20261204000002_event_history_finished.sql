-- The status page's chart counts events finished per minute over the last
-- hour. `event_history` is append-only with `updated_at` = the time it was
-- finished, so a BRIN index finds the last hour's blocks while costing the
-- delivery path next to nothing on insert.
CREATE INDEX event_history_finished_brin ON event_history USING brin (updated_at);
