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
        // Executions under a concurrency limit are taken by `claim_limited`, one key at a time.
        let sql = format!(
            "UPDATE executions SET lease_token = $1, worker_id = $2, worker_name = $3, delivered_at = $4,
                lease_expires_at = $5, updated_at = $4
             WHERE id IN (SELECT id FROM executions WHERE {} AND concurrency_key IS NULL
                 ORDER BY id LIMIT $6 {lock})
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
                "SELECT id, concurrency_key, concurrency_limit FROM executions
                 WHERE {} AND concurrency_key IS NOT NULL ORDER BY id LIMIT 500",
                filter.replace("$W", "$1").replace("$NOW", "$2")
            );
            let lease = Delivery { token: &token, worker: &wid, worker_name, now, until: delivery_until };
            tasks.extend(self.claim_limited(&candidates, &lease, max - tasks.len() as u32).await?);
        }
        tasks.sort_by_key(|t| t.execution_id);
        Ok(tasks)
    }

    /// The waiting executions under a concurrency limit that `candidates` (a query binding the
    /// worker as `$1` and the time as `$2`) finds, taken key by key in order while their key has a
    /// free slot. A slot is held by an execution delivered, running or canceling; it is counted
    /// inside the write transaction (SQLite's single writer), under a transaction-scoped advisory
    /// lock on the key (PostgreSQL), so claimers on several replicas never exceed the limit.
    async fn claim_limited(&self, candidates: &str, lease: &Delivery<'_>, max: u32) -> Result<Vec<Task>> {
        let mut out = Vec::new();
        write_pool!(self, p => {
            let mut tx = p.begin().await?;
            let rows = sqlx::query(candidates)
                .bind(lease.worker)
                .bind(lease.now.millis())
                .fetch_all(&mut *tx)
                .await?;
            // Key → its limit and its waiting executions, keys in the order of their oldest.
            let mut keys: Vec<(String, i32, Vec<String>)> = Vec::new();
            for r in &rows {
                let (id, key, limit) = (r.text("id")?, r.text("concurrency_key")?, r.int("concurrency_limit")?);
                match keys.iter_mut().find(|(k, ..)| *k == key) {
                    Some((_, _, ids)) => ids.push(id),
                    None => keys.push((key, limit, vec![id])),
                }
            }
            for (key, limit, ids) in keys {
                if out.len() as u32 >= max {
                    break;
                }
                if self.kind == crate::BackendKind::Postgres {
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7316))")
                        .bind(&key)
                        .execute(&mut *tx)
                        .await?;
                }
                let held: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM executions WHERE concurrency_key = $1
                       AND (status IN ('running', 'canceling') OR (status = 'scheduled' AND lease_token IS NOT NULL))",
                )
                .bind(&key)
                .fetch_one(&mut *tx)
                .await?;
                let mut free = (limit as i64 - held).max(0);
                for id in ids {
                    if free == 0 || out.len() as u32 >= max {
                        break;
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
                    .bind(lease.now.millis())
                    .bind(lease.until.millis())
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(r) = row {
                        out.push(task_from_row(&r, lease.token)?);
                        free -= 1;
                    }
                }
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
