-- History and attempts written by triggers (SQLite), so that a transition is one UPDATE statement:
-- the UPDATE says who made it and why (transition_actor, transition_reason) and, when an attempt
-- ends, how it ended (attempt_outcome). Keep in step with migrations/postgres/0003_transition_triggers.sql.
ALTER TABLE executions ADD COLUMN transition_actor TEXT;
ALTER TABLE executions ADD COLUMN transition_reason TEXT;
ALTER TABLE executions ADD COLUMN attempt_outcome TEXT;

CREATE TRIGGER executions_accepted AFTER INSERT ON executions
BEGIN
    INSERT INTO execution_history (execution_id, at, from_status, to_status, actor, reason, attempt)
    VALUES (NEW.id, NEW.created_at, NULL, 'requested', NEW.transition_actor, 'accepted', 0),
           (NEW.id, NEW.created_at, 'requested', NEW.status, NEW.transition_actor, NEW.transition_reason, 0);
END;

CREATE TRIGGER executions_transition AFTER UPDATE OF status ON executions
WHEN NEW.status <> OLD.status
BEGIN
    INSERT INTO execution_history (execution_id, at, from_status, to_status, actor, reason, attempt)
    VALUES (NEW.id, NEW.updated_at, OLD.status, NEW.status, NEW.transition_actor, NEW.transition_reason, NEW.attempt);
END;

CREATE TRIGGER executions_attempt_started AFTER UPDATE OF status ON executions
WHEN OLD.status = 'scheduled' AND NEW.status = 'running'
BEGIN
    INSERT INTO execution_attempts (execution_id, attempt, worker_id, worker_name, started_at, status)
    VALUES (NEW.id, NEW.attempt, NEW.worker_id, NEW.worker_name, NEW.started_at, 'running');
END;

CREATE TRIGGER executions_attempt_ended AFTER UPDATE OF status ON executions
WHEN OLD.status IN ('running', 'canceling') AND NEW.status NOT IN ('running', 'canceling')
BEGIN
    UPDATE execution_attempts
    SET status = COALESCE(NEW.attempt_outcome, NEW.status), exit_code = NEW.exit_code, error = NEW.error,
        finished_at = NEW.updated_at
    WHERE execution_id = NEW.id AND attempt = OLD.attempt;
END;
