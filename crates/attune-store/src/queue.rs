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
        let avoid = AVOID_WINDOW.as_millis();
        // An execution with a worker selector goes only to a worker whose labels (text values, as
        // registration stores them) include every selected label with the same value.
        let selected = match self.kind {
            crate::BackendKind::Postgres => {
                "(selector IS NULL OR (SELECT labels FROM workers WHERE id = $2)::jsonb @> selector::jsonb)"
            }
            crate::BackendKind::Sqlite => {
                "(selector IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(executions.selector) s
                    WHERE json_extract((SELECT labels FROM workers WHERE id = $2), '$.\"' || s.key || '\"') IS NOT s.value))"
            }
        };
        let sql = format!(
            "UPDATE executions SET lease_token = $1, worker_id = $2, worker_name = $3, delivered_at = $4,
                lease_expires_at = $5, updated_at = $4
             WHERE id IN (SELECT id FROM executions
                 WHERE status = 'scheduled' AND lease_token IS NULL AND queue IN ({queues})
                   AND not_before <= $4 AND {selected}
                   AND (avoid_worker IS NULL OR avoid_worker <> $2 OR not_before < $4 - {avoid}
                        OR NOT EXISTS (SELECT 1 FROM workers o WHERE o.status = 'active' AND o.id <> $2
                                       AND o.runtimes LIKE '%\"' || executions.queue || '\"%'))
                   AND EXISTS (SELECT 1 FROM workers w WHERE w.id = $2 AND w.status = 'active')
                 ORDER BY id LIMIT $6 {lock})
             RETURNING id, action, parameters, attempt, max_attempts, timeout_seconds"
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
            rows.iter()
                .map(|r| {
                    Ok(Task {
                        execution_id: uuid("executions", &r.text("id")?)?,
                        lease_token: token.clone(),
                        attempt: r.int("attempt")? as u32 + 1,
                        max_attempts: r.int("max_attempts")? as u32,
                        action: json("executions", "action", &r.text("action")?)?,
                        parameters: json("executions", "parameters", &r.text("parameters")?)?,
                        timeout_seconds: r.opt_big("timeout_seconds")?.map(|t| t as u64),
                        masks: Vec::new(),
                        parameter_error: None,
                    })
                })
                .collect::<Result<_>>()?
        });
        tasks.sort_by_key(|t| t.execution_id);
        Ok(tasks)
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
