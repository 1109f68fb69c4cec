-- Worker lifecycle events (PostgreSQL), written by triggers, for the event stream (/api/v1/events).
-- Execution events need no table: execution_history is that log. Keep in step with
-- migrations/sqlite/0005_worker_events.sql.
CREATE TABLE worker_events (
    id          BIGSERIAL PRIMARY KEY,
    at          BIGINT NOT NULL,
    worker_id   TEXT NOT NULL,
    worker_name TEXT NOT NULL,
    event       TEXT NOT NULL,
    reason      TEXT
);

CREATE FUNCTION attune_worker_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    now_ms BIGINT := (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO worker_events (at, worker_id, worker_name, event) VALUES (NEW.registered_at, NEW.id, NEW.name, 'registered');
    ELSE
        IF NEW.status IS DISTINCT FROM OLD.status THEN
            INSERT INTO worker_events (at, worker_id, worker_name, event, reason)
            VALUES (now_ms, NEW.id, NEW.name, NEW.status, NEW.status_reason);
        END IF;
        IF OLD.deregistered_at IS NULL AND NEW.deregistered_at IS NOT NULL THEN
            INSERT INTO worker_events (at, worker_id, worker_name, event) VALUES (NEW.deregistered_at, NEW.id, NEW.name, 'deregistered');
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER workers_events AFTER INSERT OR UPDATE ON workers
FOR EACH ROW EXECUTE FUNCTION attune_worker_event();
