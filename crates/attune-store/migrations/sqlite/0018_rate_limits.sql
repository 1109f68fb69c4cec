-- Rate limits (issue 16, SQLite): an execution whose action has a rate limit carries its bucket's
-- key (`<action>/<rendered key>`), rate and burst; buckets hold the tokens left and when they were
-- counted. A start takes a token at claim time (`Store::claim_limited`). Keep in step with
-- migrations/postgres/0018_rate_limits.sql (which differs only in the float type).
ALTER TABLE executions ADD COLUMN rate_key TEXT;
ALTER TABLE executions ADD COLUMN rate_per_second REAL;
ALTER TABLE executions ADD COLUMN rate_burst INTEGER;
CREATE TABLE rate_buckets (
    key        TEXT PRIMARY KEY,
    tokens     REAL NOT NULL,
    updated_at BIGINT NOT NULL
);
