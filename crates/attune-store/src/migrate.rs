//! Schema migrations, embedded in the binary: one ordered list per backend, applied once each,
//! recorded in `attune_migrations`. On PostgreSQL an advisory lock serialises replicas starting at once.

use crate::{BackendKind, Result, Store};

const SQLITE: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_attempts_dead_letters.sql")),
    (3, include_str!("../migrations/sqlite/0003_transition_triggers.sql")),
    (4, include_str!("../migrations/sqlite/0004_ready_index.sql")),
    (5, include_str!("../migrations/sqlite/0005_worker_events.sql")),
    (6, include_str!("../migrations/sqlite/0006_execution_logs.sql")),
    (7, include_str!("../migrations/sqlite/0007_drop_ready_index.sql")),
    (8, include_str!("../migrations/sqlite/0008_backoff_column.sql")),
    (9, include_str!("../migrations/sqlite/0009_output_encoding.sql")),
    (10, include_str!("../migrations/sqlite/0010_tokens.sql")),
    (11, include_str!("../migrations/sqlite/0011_keys.sql")),
    (12, include_str!("../migrations/sqlite/0012_events.sql")),
    (13, include_str!("../migrations/sqlite/0013_rule_events.sql")),
    (14, include_str!("../migrations/sqlite/0014_sensors.sql")),
    (15, include_str!("../migrations/sqlite/0015_buffered.sql")),
    (16, include_str!("../migrations/sqlite/0016_queue_policies.sql")),
    (17, include_str!("../migrations/sqlite/0017_concurrency.sql")),
    (18, include_str!("../migrations/sqlite/0018_rate_limits.sql")),
    (19, include_str!("../migrations/sqlite/0019_priority.sql")),
    (20, include_str!("../migrations/sqlite/0020_workflows.sql")),
    (21, include_str!("../migrations/sqlite/0021_pack_extra.sql")),
    (22, include_str!("../migrations/sqlite/0022_pack_archives.sql")),
    (23, include_str!("../migrations/sqlite/0023_finished_index.sql")),
    (24, include_str!("../migrations/sqlite/0024_ended_per_minute.sql")),
    (25, include_str!("../migrations/sqlite/0025_ready_split.sql")),
];
const POSTGRES: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (2, include_str!("../migrations/postgres/0002_attempts_dead_letters.sql")),
    (3, include_str!("../migrations/postgres/0003_transition_triggers.sql")),
    (4, include_str!("../migrations/postgres/0004_ready_index.sql")),
    (5, include_str!("../migrations/postgres/0005_worker_events.sql")),
    (6, include_str!("../migrations/postgres/0006_execution_logs.sql")),
    (8, include_str!("../migrations/postgres/0008_backoff_column.sql")),
    (9, include_str!("../migrations/postgres/0009_output_encoding.sql")),
    (10, include_str!("../migrations/postgres/0010_tokens.sql")),
    (11, include_str!("../migrations/postgres/0011_keys.sql")),
    (12, include_str!("../migrations/postgres/0012_events.sql")),
    (13, include_str!("../migrations/postgres/0013_rule_events.sql")),
    (14, include_str!("../migrations/postgres/0014_sensors.sql")),
    (15, include_str!("../migrations/postgres/0015_buffered.sql")),
    (16, include_str!("../migrations/postgres/0016_queue_policies.sql")),
    (17, include_str!("../migrations/postgres/0017_concurrency.sql")),
    (18, include_str!("../migrations/postgres/0018_rate_limits.sql")),
    (19, include_str!("../migrations/postgres/0019_priority.sql")),
    (20, include_str!("../migrations/postgres/0020_workflows.sql")),
    (21, include_str!("../migrations/postgres/0021_pack_extra.sql")),
    (22, include_str!("../migrations/postgres/0022_pack_archives.sql")),
    (23, include_str!("../migrations/postgres/0023_finished_index.sql")),
    (24, include_str!("../migrations/postgres/0024_ended_per_minute.sql")),
    (25, include_str!("../migrations/postgres/0025_ready_split.sql")),
];

/// Arbitrary constant naming Attune's migration lock.
const PG_LOCK: i64 = 0x4154_5455_4e45;

const CREATE: &str =
    "CREATE TABLE IF NOT EXISTS attune_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)";

impl Store {
    pub(crate) async fn migrate(&self) -> Result<()> {
        let now = attune_core::Timestamp::now().millis();
        let (list, pg) = match self.kind {
            BackendKind::Sqlite => (SQLITE, false),
            BackendKind::Postgres => (POSTGRES, true),
        };
        write_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if pg {
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PG_LOCK).execute(&mut *tx).await?;
            }
            sqlx::query(CREATE).execute(&mut *tx).await?;
            for (v, sql) in list {
                let done: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM attune_migrations WHERE version = $1")
                        .bind(v)
                        .fetch_optional(&mut *tx)
                        .await?;
                if done.is_none() {
                    sqlx::raw_sql(sql).execute(&mut *tx).await?;
                    sqlx::query("INSERT INTO attune_migrations (version, applied_at) VALUES ($1, $2)")
                        .bind(v)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
