-- The console's overview (issue 15) counts executions ended in each of the last 15 minutes by
-- outcome. Without this index that is a scan of the whole table (wide rows: each holds its
-- action's snapshot); with it, a range of the newest ended ones, read from the index alone.
-- Same text on both backends.
CREATE INDEX executions_finished ON executions (finished_at, status) WHERE finished_at IS NOT NULL;
