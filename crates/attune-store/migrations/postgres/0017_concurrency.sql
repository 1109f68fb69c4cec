-- Concurrency limits (issue 16): an execution whose action has a concurrency policy carries its
-- slot's key (`<action>/<rendered key>`) and limit. It holds a slot while delivered (scheduled with
-- a lease), running or canceling; the claim counts those per key. Same text on both backends.
ALTER TABLE executions ADD COLUMN concurrency_key TEXT;
ALTER TABLE executions ADD COLUMN concurrency_limit INTEGER;
CREATE INDEX executions_concurrency ON executions (concurrency_key, id)
    WHERE concurrency_key IS NOT NULL AND status IN ('scheduled', 'running', 'canceling');
