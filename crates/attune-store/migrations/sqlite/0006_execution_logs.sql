-- Output streamed by workers while an action runs (for `attune execution logs --follow`).
-- The final, capped stdout/stderr stay on the execution; these are the live chunks, secrets masked.
CREATE TABLE execution_logs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id TEXT NOT NULL,
    stream       TEXT NOT NULL,
    at           BIGINT NOT NULL,
    text         TEXT NOT NULL
);
CREATE INDEX execution_logs_execution ON execution_logs (execution_id, id);
