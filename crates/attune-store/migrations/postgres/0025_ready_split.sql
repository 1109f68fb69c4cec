-- The claim takes unlimited executions in one statement and those under a concurrency or rate
-- limit through a second path (issue 16). Both walked the one rank index of all waiting rows and
-- read each row to tell the two kinds apart: with 20,000 limited executions waiting, every claim
-- of the unlimited path read all 20,000 to find none (limited no-ops fell to 305/s on
-- PostgreSQL). Each kind now has a rank index of its own. (PostgreSQL keeps 0004's id-ordered
-- index: without it, and with statistics from before a burst, the planner took the (queue, id)
-- index for `id = ANY(…) AND status = 'scheduled' AND lease_token IS NULL` and read every waiting
-- row, 29 ms a statement with 14,000 waiting.) Same text on both backends.
DROP INDEX executions_ready_rank;
CREATE INDEX executions_ready_free ON executions (queue_rank, id)
    WHERE status = 'scheduled' AND lease_token IS NULL AND concurrency_key IS NULL AND rate_key IS NULL;
CREATE INDEX executions_ready_limited ON executions (queue_rank, id)
    WHERE status = 'scheduled' AND lease_token IS NULL AND (concurrency_key IS NOT NULL OR rate_key IS NOT NULL);
