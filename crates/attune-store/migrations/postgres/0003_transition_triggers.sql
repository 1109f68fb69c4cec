-- History and attempts written by triggers (PostgreSQL), so that a transition is one UPDATE statement:
-- the UPDATE says who made it and why (transition_actor, transition_reason) and, when an attempt
-- ends, how it ended (attempt_outcome). Keep in step with migrations/sqlite/0003_transition_triggers.sql.
ALTER TABLE executions ADD COLUMN transition_actor TEXT;
ALTER TABLE executions ADD COLUMN transition_reason TEXT;
ALTER TABLE executions ADD COLUMN attempt_outcome TEXT;

CREATE FUNCTION attune_execution_accepted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO execution_history (execution_id, at, from_status, to_status, actor, reason, attempt)
    VALUES (NEW.id, NEW.created_at, NULL, 'requested', NEW.transition_actor, 'accepted', 0),
           (NEW.id, NEW.created_at, 'requested', NEW.status, NEW.transition_actor, NEW.transition_reason, 0);
    RETURN NULL;
END $$;

CREATE TRIGGER executions_accepted AFTER INSERT ON executions
FOR EACH ROW EXECUTE FUNCTION attune_execution_accepted();

CREATE FUNCTION attune_execution_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO execution_history (execution_id, at, from_status, to_status, actor, reason, attempt)
        VALUES (NEW.id, NEW.updated_at, OLD.status, NEW.status, NEW.transition_actor, NEW.transition_reason, NEW.attempt);
        IF OLD.status = 'scheduled' AND NEW.status = 'running' THEN
            INSERT INTO execution_attempts (execution_id, attempt, worker_id, worker_name, started_at, status)
            VALUES (NEW.id, NEW.attempt, NEW.worker_id, NEW.worker_name, NEW.started_at, 'running');
        END IF;
        IF OLD.status IN ('running', 'canceling') AND NEW.status NOT IN ('running', 'canceling') THEN
            UPDATE execution_attempts
            SET status = COALESCE(NEW.attempt_outcome, NEW.status), exit_code = NEW.exit_code, error = NEW.error,
                finished_at = NEW.updated_at
            WHERE execution_id = NEW.id AND attempt = OLD.attempt;
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER executions_transition AFTER UPDATE OF status ON executions
FOR EACH ROW EXECUTE FUNCTION attune_execution_transition();
