-- Attune schema v1 (SQLite). Keep in step with migrations/postgres/0001_init.sql: same tables,
-- same columns, same meaning. Times are milliseconds since the Unix epoch; JSON is stored as text.
CREATE TABLE packs (
    ref         TEXT PRIMARY KEY,
    label       TEXT NOT NULL,
    description TEXT NOT NULL,
    version     TEXT NOT NULL,
    dir         TEXT,
    loaded_at   BIGINT NOT NULL
);

CREATE TABLE actions (
    ref        TEXT PRIMARY KEY,
    pack_ref   TEXT NOT NULL REFERENCES packs (ref) ON DELETE CASCADE,
    runtime    TEXT NOT NULL,
    definition TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX actions_pack ON actions (pack_ref);

CREATE TABLE workers (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    host            TEXT NOT NULL,
    runtimes        TEXT NOT NULL,
    labels          TEXT NOT NULL,
    concurrency     INTEGER NOT NULL,
    version         TEXT NOT NULL,
    status          TEXT NOT NULL,
    status_reason   TEXT,
    draining        BOOLEAN NOT NULL DEFAULT FALSE,
    last_heartbeat  BIGINT NOT NULL,
    registered_at   BIGINT NOT NULL,
    deregistered_at BIGINT
);
CREATE INDEX workers_status ON workers (status, last_heartbeat);

CREATE TABLE executions (
    id               TEXT PRIMARY KEY,
    action_ref       TEXT NOT NULL,
    queue            TEXT NOT NULL,
    action           TEXT NOT NULL,
    parameters       TEXT NOT NULL,
    status           TEXT NOT NULL,
    result           TEXT,
    stdout           TEXT NOT NULL DEFAULT '',
    stderr           TEXT NOT NULL DEFAULT '',
    stdout_truncated BOOLEAN NOT NULL DEFAULT FALSE,
    stderr_truncated BOOLEAN NOT NULL DEFAULT FALSE,
    exit_code        INTEGER,
    error            TEXT,
    worker_id        TEXT,
    worker_name      TEXT,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    timeout_seconds  BIGINT,
    lease_token      TEXT,
    lease_expires_at BIGINT,
    delivered_at     BIGINT,
    not_before       BIGINT NOT NULL,
    avoid_worker     TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    scheduled_at     BIGINT,
    started_at       BIGINT,
    finished_at      BIGINT,
    parent           TEXT,
    trace_id         TEXT,
    enforcement      TEXT
);
-- The queue: waiting, undelivered tasks in FIFO order (ids are UUIDv7, time-ordered).
CREATE INDEX executions_queue ON executions (queue, id) WHERE status = 'scheduled' AND lease_token IS NULL;
CREATE INDEX executions_status ON executions (status, id);
CREATE INDEX executions_action ON executions (action_ref, id);
CREATE INDEX executions_lease ON executions (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX executions_worker ON executions (worker_id) WHERE status IN ('running', 'canceling');

CREATE TABLE execution_history (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id TEXT NOT NULL,
    at           BIGINT NOT NULL,
    from_status  TEXT,
    to_status    TEXT NOT NULL,
    actor        TEXT NOT NULL,
    reason       TEXT,
    attempt      INTEGER NOT NULL
);
CREATE INDEX execution_history_execution ON execution_history (execution_id, id);
