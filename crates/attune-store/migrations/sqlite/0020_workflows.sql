-- Workflows and inquiries (issue 13). A workflow child carries its identity within its workflow
-- (`child_key`: task/iteration[/item]), unique per parent, so a child is never created twice; and
-- whether the engine has applied its end yet (`child_applied`, FALSE from creation until the
-- engine's step that consumed its end commits). The engine's state for each running workflow is
-- one row, updated only by a step that read its version. Same text on both backends.
ALTER TABLE executions ADD COLUMN child_key TEXT;
ALTER TABLE executions ADD COLUMN child_applied BOOLEAN NOT NULL DEFAULT TRUE;
CREATE UNIQUE INDEX executions_child ON executions (parent, child_key) WHERE child_key IS NOT NULL;
CREATE INDEX executions_parent ON executions (parent) WHERE parent IS NOT NULL;
-- Only ended children whose end is not applied yet: what the engine looks for on every round.
CREATE INDEX executions_child_unapplied ON executions (parent) WHERE child_key IS NOT NULL AND child_applied = FALSE
    AND status IN ('succeeded', 'failed', 'timeout', 'canceled', 'abandoned');
-- Executions the server runs (workflows, inquiries) are found by queue and status.
CREATE INDEX executions_server_run ON executions (queue, status) WHERE queue IN ('workflow', 'inquiry');

CREATE TABLE workflows (
    execution_id TEXT PRIMARY KEY,
    -- running, canceling, done (the engine's phase)
    phase        TEXT NOT NULL,
    paused       BOOLEAN NOT NULL DEFAULT FALSE,
    state        TEXT NOT NULL,
    -- How it ended, once phase = done (JSON), until the execution has ended too.
    finish       TEXT,
    version      BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX workflows_open ON workflows (phase) WHERE phase <> 'done' OR finish IS NOT NULL;
