//! The queue: handing `scheduled` tasks to workers (claim) and taking them back when they were not
//! started — the poller was gone (unclaim) or the start confirmation did not come in time
//! (delivery expiry). None of these moves a status or counts an attempt: a delivery only sets or
//! clears the lease of a waiting task. Status changes happen in `lifecycle`.

use attune_core::{lifecycle::AVOID_WINDOW, Runtime, Task, Timestamp};
use uuid::Uuid;

use crate::{
    rows::{json, uuid, RowExt},
    Result, Store,
};

const TASK_COLS: &str = "id, action, parameters, attempt, max_attempts, timeout_seconds";

/// A delivery being made: its lease token, to whom, and until when it must be started.
struct Delivery<'a> {
    token: &'a str,
    worker: &'a str,
    worker_name: &'a str,
    now: Timestamp,
    until: Timestamp,
}

fn task_from_row(r: &impl RowExt, token: &str) -> Result<Task> {
    Ok(Task {
        execution_id: uuid("executions", &r.text("id")?)?,
        lease_token: token.to_owned(),
        attempt: r.int("attempt")? as u32 + 1,
        max_attempts: r.int("max_attempts")? as u32,
        action: json("executions", "action", &r.text("action")?)?,
        parameters: json("executions", "parameters", &r.text("parameters")?)?,
        timeout_seconds: r.opt_big("timeout_seconds")?.map(|t| t as u64),
        masks: Vec::new(),
        parameter_error: None,
    })
}

impl Store {
    /// Hands up to `max` waiting tasks from the given queues to `worker`, oldest first, if the worker
    /// is `active` (a draining or stale worker gets nothing). They stay
    /// `scheduled` until the worker confirms with `start`; unconfirmed ones go back to the queue when
    /// `delivery_until` passes (see `expire_deliveries`).
    pub async fn claim(
        &self,
        worker: Uuid,
        worker_name: &str,
        runtimes: &[Runtime],
        max: u32,
        now: Timestamp,
        delivery_until: Timestamp,
    ) -> Result<Vec<Task>> {
        if max == 0 || runtimes.is_empty() {
            return Ok(Vec::new());
        }
        let queues = runtimes.iter().map(|r| format!("'{}'", r.as_str())).collect::<Vec<_>>().join(", ");
        // PostgreSQL: SKIP LOCKED lets concurrent claimers pass each other. SQLite has a single
        // writer, so the sub-select and update are already atomic.
        let lock = match self.kind {
            crate::BackendKind::Postgres => "FOR UPDATE SKIP LOCKED",
            crate::BackendKind::Sqlite => "",
        };
        // SQLite, left to itself, takes the (queue, id) index for `queue IN (…)` and then sorts
        // every waiting row by rank: with 20,000 waiting that halved the claim rate (measured).
        // The rank index gives them in order, which is what a claim of the first few needs.
        let order_index = match self.kind {
            crate::BackendKind::Postgres => "",
            crate::BackendKind::Sqlite => "INDEXED BY executions_ready_rank",
        };
        // What a waiting execution must be for this worker, with `$W` its id and `$NOW` the time.
        // An execution with a worker selector goes only to a worker whose labels (text values, as
        // registration stores them) include every selected label with the same value.
        let avoid = AVOID_WINDOW.as_millis();
        let selected = match self.kind {
            crate::BackendKind::Postgres => {
                "(selector IS NULL OR (SELECT labels FROM workers WHERE id = $W)::jsonb @> selector::jsonb)"
            }
            crate::BackendKind::Sqlite => {
                "(selector IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(executions.selector) s
                    WHERE json_extract((SELECT labels FROM workers WHERE id = $W), '$.\"' || s.key || '\"') IS NOT s.value))"
            }
        };
        let filter = format!(
            "status = 'scheduled' AND lease_token IS NULL AND queue IN ({queues})
               AND not_before <= $NOW AND {selected}
               AND (avoid_worker IS NULL OR avoid_worker <> $W OR not_before < $NOW - {avoid}
                    OR NOT EXISTS (SELECT 1 FROM workers o WHERE o.status = 'active' AND o.id <> $W
                                   AND o.runtimes LIKE '%\"' || executions.queue || '\"%'))
               AND EXISTS (SELECT 1 FROM workers w WHERE w.id = $W AND w.status = 'active')"
        );
        // Executions under a concurrency or rate limit are taken by `claim_limited`.
        let sql = format!(
            "UPDATE executions SET lease_token = $1, worker_id = $2, worker_name = $3, delivered_at = $4,
                lease_expires_at = $5, updated_at = $4
             WHERE id IN (SELECT id FROM executions {order_index} WHERE {} AND concurrency_key IS NULL AND rate_key IS NULL
                 ORDER BY queue_rank, id LIMIT $6 {lock})
             RETURNING {TASK_COLS}",
            filter.replace("$W", "$2").replace("$NOW", "$4")
        );
        let token = Uuid::new_v4().simple().to_string();
        let wid = worker.to_string();
        let mut tasks: Vec<Task> = write_pool!(self, p => {
            let rows = sqlx::query(&sql)
                .bind(&token)
                .bind(&wid)
                .bind(worker_name)
                .bind(now.millis())
                .bind(delivery_until.millis())
                .bind(max as i64)
                .fetch_all(p)
                .await?;
            rows.iter().map(|r| task_from_row(r, &token)).collect::<Result<_>>()?
        });
        if (tasks.len() as u32) < max {
            let candidates = format!(
                "SELECT id, concurrency_key, concurrency_limit, rate_key, rate_per_second, rate_burst
                 FROM executions {order_index} WHERE {} AND (concurrency_key IS NOT NULL OR rate_key IS NOT NULL) ORDER BY queue_rank, id LIMIT 500",
                filter.replace("$W", "$1").replace("$NOW", "$2")
            );
            let lease = Delivery { token: &token, worker: &wid, worker_name, now, until: delivery_until };
            tasks.extend(self.claim_limited(&candidates, &lease, max - tasks.len() as u32).await?);
        }
        tasks.sort_by_key(|t| t.execution_id);
        Ok(tasks)
    }

    /// The waiting executions under a concurrency or rate limit that `candidates` (a query binding
    /// the worker as `$1` and the time as `$2`) finds, oldest first, each taken if its
    /// concurrency key has a free slot and its rate bucket a token. A slot is held by an execution
    /// delivered, running or canceling, counted inside the write transaction; a bucket refills at
    /// its rate up to its burst and is written back at the end. Both are read under SQLite's single
    /// writer, or under a transaction-scoped advisory lock per key on PostgreSQL, so claimers on
    /// several replicas never exceed a limit.
    async fn claim_limited(&self, candidates: &str, lease: &Delivery<'_>, max: u32) -> Result<Vec<Task>> {
        use sqlx::Row;
        let mut out = Vec::new();
        let now = lease.now.millis();
        write_pool!(self, p => {
            let mut tx = p.begin().await?;
            let rows = sqlx::query(candidates)
                .bind(lease.worker)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
            // Free slots per concurrency key, tokens per rate key (as read, then as spent).
            let mut slots: std::collections::HashMap<String, i64> = Default::default();
            let mut buckets: std::collections::HashMap<String, f64> = Default::default();
            for r in &rows {
                if out.len() as u32 >= max {
                    break;
                }
                let id = r.text("id")?;
                let ckey = r.opt_text("concurrency_key")?;
                let rkey = r.opt_text("rate_key")?;
                if let Some(k) = &ckey {
                    if !slots.contains_key(k) {
                        if self.kind == crate::BackendKind::Postgres {
                            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7316))")
                                .bind(k)
                                .execute(&mut *tx)
                                .await?;
                        }
                        let held: i64 = sqlx::query_scalar(
                            "SELECT COUNT(*) FROM executions WHERE concurrency_key = $1
                               AND (status IN ('running', 'canceling') OR (status = 'scheduled' AND lease_token IS NOT NULL))",
                        )
                        .bind(k)
                        .fetch_one(&mut *tx)
                        .await?;
                        let limit = r.opt_int("concurrency_limit")?.unwrap_or(1) as i64;
                        slots.insert(k.clone(), (limit - held).max(0));
                    }
                    if slots[k] == 0 {
                        continue;
                    }
                }
                if let Some(k) = &rkey {
                    if !buckets.contains_key(k) {
                        if self.kind == crate::BackendKind::Postgres {
                            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7317))")
                                .bind(k)
                                .execute(&mut *tx)
                                .await?;
                        }
                        let rate: f64 = r.try_get::<Option<f64>, _>("rate_per_second")?.unwrap_or(1.0);
                        let burst = r.opt_int("rate_burst")?.unwrap_or(1).max(1) as f64;
                        let stored = sqlx::query("SELECT tokens, updated_at FROM rate_buckets WHERE key = $1")
                            .bind(k)
                            .fetch_optional(&mut *tx)
                            .await?;
                        let tokens = match stored {
                            None => burst,
                            Some(b) => {
                                let (t, at): (f64, i64) = (b.try_get("tokens")?, b.try_get("updated_at")?);
                                (t + (now - at).max(0) as f64 / 1000.0 * rate).min(burst)
                            }
                        };
                        buckets.insert(k.clone(), tokens);
                    }
                    if buckets[k] < 1.0 {
                        continue;
                    }
                }
                let row = sqlx::query(&format!(
                    "UPDATE executions SET lease_token = $2, worker_id = $3, worker_name = $4, delivered_at = $5,
                        lease_expires_at = $6, updated_at = $5
                     WHERE id = $1 AND status = 'scheduled' AND lease_token IS NULL RETURNING {TASK_COLS}"
                ))
                .bind(&id)
                .bind(lease.token)
                .bind(lease.worker)
                .bind(lease.worker_name)
                .bind(now)
                .bind(lease.until.millis())
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(row) = row {
                    out.push(task_from_row(&row, lease.token)?);
                    if let Some(k) = &ckey {
                        *slots.get_mut(k).expect("read above") -= 1;
                    }
                    if let Some(k) = &rkey {
                        *buckets.get_mut(k).expect("read above") -= 1.0;
                    }
                }
            }
            for (k, tokens) in &buckets {
                sqlx::query(
                    "INSERT INTO rate_buckets (key, tokens, updated_at) VALUES ($1, $2, $3)
                     ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at",
                )
                .bind(k)
                .bind(*tokens)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(out)
    }

    /// The open executions (waiting, running or canceling) under concurrency key `key`, oldest
    /// first.
    pub async fn open_with_concurrency_key(&self, key: &str) -> Result<Vec<Uuid>> {
        let ids: Vec<String> = read_pool!(self, p => {
            sqlx::query_scalar(
                "SELECT id FROM executions WHERE concurrency_key = $1
                   AND status IN ('scheduled', 'running', 'canceling') ORDER BY id",
            )
            .bind(key)
            .fetch_all(p)
            .await?
        });
        ids.iter().map(|s| uuid("executions", s)).collect()
    }

    /// Puts back in the queue every task that was handed out but not started in time. This is not
    /// an attempt: the attempt counter only moves on `start`.
    pub async fn expire_deliveries(&self, now: Timestamp) -> Result<u64> {
        write_pool!(self, p => {
            Ok(sqlx::query(
                "UPDATE executions SET lease_token = NULL, lease_expires_at = NULL, delivered_at = NULL,
                    worker_id = NULL, worker_name = NULL, updated_at = $1
                 WHERE status = 'scheduled' AND lease_token IS NOT NULL AND lease_expires_at < $1",
            )
            .bind(now.millis())
            .execute(p)
            .await?
            .rows_affected())
        })
    }

    /// Puts back tasks just handed out under `token` whose poller is known to be gone (its
    /// connection closed before the answer could be sent). Not an attempt.
    pub async fn unclaim(&self, ids: &[Uuid], token: &str, now: Timestamp) -> Result<u64> {
        let mut n = 0;
        for id in ids {
            n += write_pool!(self, p => {
                sqlx::query(
                    "UPDATE executions SET lease_token = NULL, lease_expires_at = NULL, delivered_at = NULL,
                        worker_id = NULL, worker_name = NULL, updated_at = $3
                     WHERE id = $1 AND lease_token = $2 AND status = 'scheduled'",
                )
                .bind(id.to_string())
                .bind(token)
                .bind(now.millis())
                .execute(p)
                .await?
                .rows_affected()
            });
        }
        Ok(n)
    }
}
