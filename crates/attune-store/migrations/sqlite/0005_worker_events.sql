-- Worker lifecycle events (SQLite), written by triggers, for the event stream (/api/v1/events).
-- Execution events need no table: execution_history is that log. Keep in step with
-- migrations/postgres/0005_worker_events.sql.
CREATE TABLE worker_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT NOT NULL,
    worker_id   TEXT NOT NULL,
    worker_name TEXT NOT NULL,
    event       TEXT NOT NULL,
    reason      TEXT
);

CREATE TRIGGER workers_registered AFTER INSERT ON workers
BEGIN
    INSERT INTO worker_events (at, worker_id, worker_name, event, reason)
    VALUES (NEW.registered_at, NEW.id, NEW.name, 'registered', NULL);
END;

CREATE TRIGGER workers_status_changed AFTER UPDATE OF status ON workers
WHEN NEW.status <> OLD.status
BEGIN
    INSERT INTO worker_events (at, worker_id, worker_name, event, reason)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), NEW.id, NEW.name, NEW.status, NEW.status_reason);
END;

CREATE TRIGGER workers_deregistered AFTER UPDATE OF deregistered_at ON workers
WHEN OLD.deregistered_at IS NULL AND NEW.deregistered_at IS NOT NULL
BEGIN
    INSERT INTO worker_events (at, worker_id, worker_name, event, reason)
    VALUES (NEW.deregistered_at, NEW.id, NEW.name, 'deregistered', NULL);
END;
