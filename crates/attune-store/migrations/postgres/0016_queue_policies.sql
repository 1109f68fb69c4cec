-- Queue policies (issue 16): an execution's own schedule-to-start timeout (from its action or its
-- submission; NULL: the server's) and the worker labels it needs (a JSON object of text values;
-- NULL: any worker of its runtime). Both are copied from the execution's snapshot of its action at
-- submission so that the monitor and the claim can filter on them. Same text on both backends.
ALTER TABLE executions ADD COLUMN scheduled_timeout_ms BIGINT;
ALTER TABLE executions ADD COLUMN selector TEXT;
