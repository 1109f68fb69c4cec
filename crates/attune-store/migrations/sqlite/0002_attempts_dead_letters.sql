-- Attempts and dead letters (SQLite). Keep in step with migrations/postgres/0002_attempts_dead_letters.sql.
-- One row per started attempt: who ran it and how it ended.
CREATE TABLE execution_attempts (
    execution_id TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    worker_id    TEXT,
    worker_name  TEXT,
    started_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    status       TEXT NOT NULL,
    exit_code    INTEGER,
    error        TEXT,
    PRIMARY KEY (execution_id, attempt)
);

-- Work that was never successfully processed: expired in the queue, abandoned by a dead worker on
-- its last attempt, or out of retries. Listed with the cause; requeueing creates a new execution.
CREATE TABLE dead_letters (
    id           TEXT PRIMARY KEY,
    execution_id TEXT NOT NULL,
    action_ref   TEXT NOT NULL,
    cause        TEXT NOT NULL,
    error        TEXT,
    created_at   BIGINT NOT NULL,
    requeued_at  BIGINT,
    requeued_as  TEXT
);
CREATE INDEX dead_letters_execution ON dead_letters (execution_id);
