-- API tokens (SQLite). Only the SHA-256 of a token's secret is stored. A name is unique among the
-- tokens in use (revoked names may be reused); a worker's own credential (role 'agent') carries the
-- worker's name, which need not be unique. Keep in step with migrations/postgres/0010_tokens.sql.
CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    worker_id    TEXT,
    created_at   BIGINT NOT NULL,
    created_by   TEXT,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE UNIQUE INDEX tokens_name ON tokens (name) WHERE revoked_at IS NULL AND role <> 'agent';
CREATE INDEX tokens_worker ON tokens (worker_id) WHERE worker_id IS NOT NULL;
