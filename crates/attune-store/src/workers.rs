//! The worker side: registration, heartbeats (which extend leases), claiming tasks from the queue,
//! and the fenced `start`/`complete` reports. A report whose lease token is not the execution's
//! current one is rejected with `StaleLease` and changes nothing.

use std::{collections::HashMap, time::Duration};

use attune_core::{
    Execution, ExecutionStatus, Lease, LeaseState, Report, Runtime, Task, Timestamp, Worker, WorkerStatus,
};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    executions::{exec_from_row, EXEC_COLS},
    rows::{json, to_json, uuid, RowExt},
    Result, Store, StoreError,
};

#[derive(Debug, Clone)]
pub struct NewWorker {
    pub name: String,
    pub host: String,
    pub runtimes: Vec<Runtime>,
    pub labels: Value,
    pub concurrency: u32,
    pub version: String,
}

/// A retried attempt is kept from the worker that lost the previous one for this long after it
/// becomes eligible, unless no other active worker serves its queue; after that any worker may take
/// it (the failed worker may be the only one left).
const AVOID_WINDOW_MS: i64 = 10_000;

const WORKER_COLS: &str = "w.id, w.name, w.host, w.runtimes, w.labels, w.concurrency, w.version, w.status, \
    w.status_reason, w.last_heartbeat, w.registered_at, w.deregistered_at, \
    (SELECT COUNT(*) FROM executions e WHERE e.worker_id = w.id AND e.status IN ('running', 'canceling')) AS in_flight";

fn worker_from_row(r: &impl RowExt) -> Result<Worker> {
    const T: &str = "workers";
    let status = r.text("status")?;
    Ok(Worker {
        id: uuid(T, &r.text("id")?)?,
        name: r.text("name")?,
        host: r.text("host")?,
        runtimes: json(T, "runtimes", &r.text("runtimes")?)?,
        labels: json(T, "labels", &r.text("labels")?)?,
        concurrency: r.int("concurrency")? as u32,
        version: r.text("version")?,
        status: WorkerStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt { table: T, message: format!("status {status:?}") })?,
        status_reason: r.opt_text("status_reason")?,
        last_heartbeat: Timestamp(r.big("last_heartbeat")?),
        registered_at: Timestamp(r.big("registered_at")?),
        deregistered_at: r.opt_big("deregistered_at")?.map(Timestamp),
        in_flight: r.big("in_flight")? as u32,
    })
}

fn stale(id: &str, message: impl Into<String>) -> StoreError {
    StoreError::StaleLease { id: id.to_owned(), message: message.into() }
}

impl Store {
    pub async fn register_worker(&self, w: &NewWorker, now: Timestamp) -> Result<Worker> {
        let id = Uuid::now_v7();
        write_pool!(self, p => {
            sqlx::query(
                "INSERT INTO workers (id, name, host, runtimes, labels, concurrency, version, status,
                    last_heartbeat, registered_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $8)",
            )
            .bind(id.to_string())
            .bind(&w.name)
            .bind(&w.host)
            .bind(to_json(&w.runtimes))
            .bind(to_json(&w.labels))
            .bind(w.concurrency as i32)
            .bind(&w.version)
            .bind(now.millis())
            .execute(p)
            .await?;
        });
        self.get_worker(id).await?.ok_or(StoreError::NotFound { what: "worker", id: id.to_string() })
    }

    pub async fn get_worker(&self, id: Uuid) -> Result<Option<Worker>> {
        read_pool!(self, p => {
            let row = sqlx::query(&format!("SELECT {WORKER_COLS} FROM workers w WHERE w.id = $1"))
                .bind(id.to_string())
                .fetch_optional(p)
                .await?;
            row.map(|r| worker_from_row(&r)).transpose()
        })
    }

    /// Workers, active first, newest first; deregistered ones only with `all`.
    pub async fn list_workers(&self, all: bool) -> Result<Vec<Worker>> {
        let filter = if all { "" } else { "WHERE w.deregistered_at IS NULL" };
        read_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {WORKER_COLS} FROM workers w {filter} ORDER BY w.status, w.registered_at DESC"
            ))
            .fetch_all(p)
            .await?;
            rows.iter().map(worker_from_row).collect()
        })
    }

    /// Records a heartbeat: the worker is `active` again unless it is draining, and each lease it
    /// still holds is extended to `lease_until`.
    pub async fn heartbeat(
        &self,
        worker: Uuid,
        leases: &[Lease],
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<(WorkerStatus, Vec<(Uuid, LeaseState)>)> {
        let wid = worker.to_string();
        write_pool!(self, p => {
            let mut tx = p.begin().await?;
            let status: Option<String> = sqlx::query_scalar(
                "UPDATE workers SET last_heartbeat = $2,
                    status = CASE WHEN draining OR deregistered_at IS NOT NULL THEN 'inactive' ELSE 'active' END,
                    status_reason = CASE WHEN draining OR deregistered_at IS NOT NULL THEN status_reason ELSE NULL END
                 WHERE id = $1 RETURNING status",
            )
            .bind(&wid)
            .bind(now.millis())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(status) = status else {
                return Err(StoreError::NotFound { what: "worker", id: wid });
            };
            let mut out = Vec::with_capacity(leases.len());
            for l in leases {
                let st: Option<String> = sqlx::query_scalar(
                    "UPDATE executions SET lease_expires_at = $4
                     WHERE id = $1 AND lease_token = $2 AND worker_id = $3 AND status IN ('running', 'canceling')
                     RETURNING status",
                )
                .bind(l.execution_id.to_string())
                .bind(&l.lease_token)
                .bind(&wid)
                .bind(lease_until.millis())
                .fetch_optional(&mut *tx)
                .await?;
                let state = match st.as_deref() {
                    Some("running") => LeaseState::Held,
                    Some(_) => LeaseState::Cancel,
                    None => LeaseState::Revoked,
                };
                out.push((l.execution_id, state));
            }
            tx.commit().await?;
            Ok((WorkerStatus::parse(&status).unwrap_or(WorkerStatus::Inactive), out))
        })
    }

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
        let sql = format!(
            "UPDATE executions SET lease_token = $1, worker_id = $2, worker_name = $3, delivered_at = $4,
                lease_expires_at = $5, updated_at = $4
             WHERE id IN (SELECT id FROM executions
                 WHERE status = 'scheduled' AND lease_token IS NULL AND queue IN ({queues})
                   AND not_before <= $4
                   AND (avoid_worker IS NULL OR avoid_worker <> $2 OR not_before < $4 - {AVOID_WINDOW_MS}
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
                    })
                })
                .collect::<Result<_>>()?
        });
        tasks.sort_by_key(|t| t.execution_id);
        Ok(tasks)
    }

    /// The worker confirms it is starting the task: `scheduled → running`, a new attempt, and the
    /// lease runs until `lease_until` (extended by heartbeats). Repeating it is harmless.
    pub async fn start(
        &self,
        id: Uuid,
        token: &str,
        actor: &str,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Execution> {
        let ids = id.to_string();
        // One statement: the `executions_transition` and `executions_attempt_started` triggers
        // write the history row and the attempt row.
        let started: Option<Execution> = write_pool!(self, p => {
            let row = sqlx::query(&format!(
                "UPDATE executions SET status = 'running', attempt = attempt + 1, started_at = $3,
                    updated_at = $3, lease_expires_at = $4, delivered_at = NULL, transition_actor = $5,
                    transition_reason = 'attempt ' || (attempt + 1) || ' started', attempt_outcome = NULL
                 WHERE id = $1 AND lease_token = $2 AND status = 'scheduled' RETURNING {EXEC_COLS}"
            ))
            .bind(&ids)
            .bind(token)
            .bind(now.millis())
            .bind(lease_until.millis())
            .bind(actor)
            .fetch_optional(p)
            .await?;
            row.map(|r| exec_from_row(&r)).transpose()?
        });
        if let Some(e) = started {
            return Ok(e);
        }
        let e = self
            .get_execution(id)
            .await?
            .ok_or_else(|| StoreError::NotFound { what: "execution", id: ids.clone() })?;
        if e.status.is_active() && self.holds(id, token).await? {
            Ok(e)
        } else {
            Err(stale(
                &ids,
                format!("the execution is {} and this delivery's lease is no longer valid", e.status),
            ))
        }
    }

    /// `start` for many tasks at once (one statement per distinct token). Returns, per lease, the
    /// execution's status afterwards or why it cannot start; and, for those started now, how long
    /// each had waited since it was (last) scheduled.
    pub async fn start_many(
        &self,
        leases: &[Lease],
        actor: &str,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<(Vec<(Uuid, Result<ExecutionStatus>)>, Vec<Duration>)> {
        let mut waited = Vec::new();
        let mut by_token: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for l in leases {
            by_token.entry(l.lease_token.as_str()).or_default().push(l.execution_id.to_string());
        }
        let mut started = std::collections::HashSet::new();
        for (token, ids) in by_token {
            let list = ids.iter().map(|i| format!("'{i}'")).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "UPDATE executions SET status = 'running', attempt = attempt + 1, started_at = $2,
                    updated_at = $2, lease_expires_at = $3, delivered_at = NULL, transition_actor = $4,
                    transition_reason = 'attempt ' || (attempt + 1) || ' started', attempt_outcome = NULL
                 WHERE id IN ({list}) AND lease_token = $1 AND status = 'scheduled' RETURNING id, scheduled_at"
            );
            let got: Vec<(String, Option<i64>)> = write_pool!(self, p => {
                let rows = sqlx::query(&sql)
                    .bind(token)
                    .bind(now.millis())
                    .bind(lease_until.millis())
                    .bind(actor)
                    .fetch_all(p)
                    .await?;
                rows.iter().map(|r| Ok((r.text("id")?, r.opt_big("scheduled_at")?))).collect::<Result<_>>()?
            });
            for (id, scheduled_at) in got {
                if let Some(at) = scheduled_at {
                    waited.push(Duration::from_millis(now.millis().saturating_sub(at).max(0) as u64));
                }
                started.insert((id, token.to_owned()));
            }
        }
        let mut out = Vec::with_capacity(leases.len());
        for l in leases {
            if started.contains(&(l.execution_id.to_string(), l.lease_token.clone())) {
                out.push((l.execution_id, Ok(ExecutionStatus::Running)));
            } else {
                // Not started now: a repeat (fine) or stale (refused), as `start` decides.
                let r = self
                    .start(l.execution_id, &l.lease_token, actor, now, lease_until)
                    .await
                    .map(|e| e.status);
                out.push((l.execution_id, r));
            }
        }
        Ok((out, waited))
    }

    async fn holds(&self, id: Uuid, token: &str) -> Result<bool> {
        read_pool!(self, p => {
            let t: Option<Option<String>> = sqlx::query_scalar("SELECT lease_token FROM executions WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(p)
                .await?;
            Ok(t.flatten().as_deref() == Some(token))
        })
    }

    /// Records the outcome of the current attempt. A failed or timed-out attempt with attempts left
    /// goes back to the queue (after the action's backoff, preferring another worker); the last one
    /// ends the execution, and with a retry policy it is also dead-lettered (`retries_exhausted`).
    /// Idempotent for the same token once terminal; any other token is stale.
    pub async fn complete(
        &self,
        id: Uuid,
        token: &str,
        report: &Report,
        actor: &str,
        now: Timestamp,
    ) -> Result<Execution> {
        let ids = id.to_string();
        for _ in 0..5 {
            let current = self.completion_rows(std::slice::from_ref(&ids)).await?.pop();
            let Some(row) = current else {
                return Err(StoreError::NotFound { what: "execution", id: ids });
            };
            let plan = match row.plan(token, report)? {
                Planned::Apply(plan) => plan,
                Planned::AlreadyDone => {
                    return self
                        .get_execution(id)
                        .await?
                        .ok_or(StoreError::NotFound { what: "execution", id: ids });
                }
            };
            let sql = complete_sql();
            let done: Option<Execution> = write_pool!(self, p => {
                // A transaction only when a dead letter is written with the transition.
                let mut tx = if plan.dead { Some(p.begin().await?) } else { None };
                let q = bind_completion(sqlx::query(&sql), &ids, token, report, &plan, actor, now);
                let row = match tx.as_mut() {
                    Some(tx) => q.fetch_optional(&mut **tx).await?,
                    None => q.fetch_optional(p).await?,
                };
                let e = row.map(|r| exec_from_row(&r)).transpose()?;
                if let Some(mut tx) = tx {
                    if let Some(e) = &e {
                        dead_letter!(tx, &ids, e.action_ref.as_str(), "retries_exhausted", &plan.error_json, now.millis());
                    }
                    tx.commit().await?;
                }
                e
            });
            if let Some(e) = done {
                return Ok(e);
            }
        }
        Err(stale(&ids, "the execution kept changing while the report was applied"))
    }

    /// `complete` for many reports in one transaction (one commit). Reports that cannot be applied
    /// directly (stale, repeated, raced) are handed to `complete` one by one, which answers them as
    /// a single report would be answered.
    pub async fn complete_many(
        &self,
        items: &[(Uuid, String, Report)],
        actor: &str,
        now: Timestamp,
    ) -> Result<Vec<(Uuid, Result<Execution>)>> {
        let ids: Vec<String> = items.iter().map(|(id, _, _)| id.to_string()).collect();
        let rows: HashMap<String, CompletionRow> =
            self.completion_rows(&ids).await?.into_iter().map(|r| (r.id.clone(), r)).collect();
        let mut plans = Vec::new();
        for (i, (_, token, report)) in items.iter().enumerate() {
            if let Some(row) = rows.get(&ids[i]) {
                if let Ok(Planned::Apply(plan)) = row.plan(token, report) {
                    plans.push((i, plan));
                }
            }
        }
        let mut done: HashMap<usize, Execution> = HashMap::new();
        if !plans.is_empty() {
            let sql = complete_sql();
            write_pool!(self, p => {
                let mut tx = p.begin().await?;
                for (i, plan) in &plans {
                    let (_, token, report) = &items[*i];
                    let q = bind_completion(sqlx::query(&sql), &ids[*i], token, report, plan, actor, now);
                    if let Some(row) = q.fetch_optional(&mut *tx).await? {
                        let e = exec_from_row(&row)?;
                        if plan.dead {
                            dead_letter!(tx, &ids[*i], e.action_ref.as_str(), "retries_exhausted", &plan.error_json, now.millis());
                        }
                        done.insert(*i, e);
                    }
                }
                tx.commit().await?;
            });
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, (id, token, report)) in items.iter().enumerate() {
            let r = match done.remove(&i) {
                Some(e) => Ok(e),
                None => self.complete(*id, token, report, actor, now).await,
            };
            out.push((*id, r));
        }
        Ok(out)
    }

    async fn completion_rows(&self, ids: &[String]) -> Result<Vec<CompletionRow>> {
        let list = ids.iter().map(|i| format!("'{}'", i.replace('\'', ""))).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT id, status, lease_token, attempt, max_attempts, action FROM executions WHERE id IN ({list})"
        );
        read_pool!(self, p => {
            let rows = sqlx::query(&sql).fetch_all(p).await?;
            rows.iter()
                .map(|r| {
                    let status = r.text("status")?;
                    Ok(CompletionRow {
                        id: r.text("id")?,
                        status: ExecutionStatus::parse(&status).ok_or_else(|| StoreError::Corrupt {
                            table: "executions",
                            message: format!("status {status:?}"),
                        })?,
                        lease: r.opt_text("lease_token")?,
                        attempt: r.int("attempt")?,
                        max_attempts: r.int("max_attempts")?,
                        action: r.text("action")?,
                    })
                })
                .collect()
        })
    }

    /// Stops new work for the worker at once (`inactive`, draining); its leases stay valid while it
    /// keeps heartbeating.
    pub async fn drain_worker(&self, worker: Uuid, now: Timestamp) -> Result<Worker> {
        self.set_worker_down(worker, now, "draining: shutting down gracefully", false).await
    }

    /// The worker is gone for good.
    pub async fn deregister_worker(&self, worker: Uuid, now: Timestamp) -> Result<Worker> {
        self.set_worker_down(worker, now, "deregistered", true).await
    }

    async fn set_worker_down(
        &self,
        worker: Uuid,
        now: Timestamp,
        reason: &str,
        gone: bool,
    ) -> Result<Worker> {
        let wid = worker.to_string();
        let n = write_pool!(self, p => {
            sqlx::query(
                "UPDATE workers SET status = 'inactive', draining = TRUE, status_reason = $2,
                    deregistered_at = CASE WHEN $3 THEN $4 ELSE deregistered_at END
                 WHERE id = $1",
            )
            .bind(&wid)
            .bind(reason)
            .bind(gone)
            .bind(now.millis())
            .execute(p)
            .await?
            .rows_affected()
        });
        if n == 0 {
            return Err(StoreError::NotFound { what: "worker", id: wid });
        }
        self.get_worker(worker).await?.ok_or(StoreError::NotFound { what: "worker", id: wid })
    }
}

/// What `complete` needs to know about an execution before changing it.
struct CompletionRow {
    id: String,
    status: ExecutionStatus,
    lease: Option<String>,
    attempt: i32,
    max_attempts: i32,
    action: String,
}

enum Planned {
    Apply(CompletionPlan),
    /// The execution already ended under this lease: a repeated report.
    AlreadyDone,
}

/// How one report changes its execution.
struct CompletionPlan {
    from: ExecutionStatus,
    to: ExecutionStatus,
    retry: bool,
    backoff: u64,
    dead: bool,
    reason: Option<String>,
    error_json: Option<String>,
}

impl CompletionRow {
    /// Decides the transition: the reported outcome, or back to the queue when attempts are left.
    fn plan(&self, token: &str, report: &Report) -> Result<Planned> {
        let from = self.status;
        if self.lease.as_deref() != Some(token) {
            return Err(stale(&self.id, format!("the execution is {from} and has a newer lease")));
        }
        if from.is_terminal() {
            return Ok(Planned::AlreadyDone);
        }
        let reported = report.status;
        from.check(reported).map_err(|source| StoreError::Transition { id: self.id.clone(), source })?;
        let (attempt, max_attempts) = (self.attempt, self.max_attempts);
        let failed = matches!(reported, ExecutionStatus::Failed | ExecutionStatus::Timeout);
        let retry = failed && from == ExecutionStatus::Running && attempt < max_attempts;
        let backoff = if retry {
            json::<attune_core::Action>("executions", "action", &self.action)?.retry.backoff_seconds
        } else {
            0
        };
        let outcome = report
            .error
            .as_ref()
            .and_then(|e| e.get("error"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| report.exit_code.map(|c| format!("exit code {c}")));
        let reason = if retry {
            Some(format!(
                "attempt {attempt} {reported}{}; retrying (attempt {} of {max_attempts}){}",
                outcome.as_deref().map(|o| format!(": {o}")).unwrap_or_default(),
                attempt + 1,
                if backoff > 0 { format!(" in {backoff}s") } else { String::new() },
            ))
        } else {
            outcome
        };
        Ok(Planned::Apply(CompletionPlan {
            from,
            to: if retry { ExecutionStatus::Scheduled } else { reported },
            retry,
            backoff,
            dead: failed && !retry && max_attempts > 1,
            reason,
            error_json: report.error.as_ref().map(to_json),
        }))
    }
}

fn complete_sql() -> String {
    format!(
        "UPDATE executions SET status = $3, exit_code = $4, stdout = $5, stderr = $6,
            stdout_truncated = $7, stderr_truncated = $8, result = $9, error = $10, updated_at = $11,
            lease_expires_at = NULL,
            finished_at = CASE WHEN $12 THEN NULL ELSE $11 END,
            lease_token = CASE WHEN $12 THEN NULL ELSE lease_token END,
            avoid_worker = CASE WHEN $12 THEN worker_id ELSE avoid_worker END,
            worker_id = CASE WHEN $12 THEN NULL ELSE worker_id END,
            worker_name = CASE WHEN $12 THEN NULL ELSE worker_name END,
            scheduled_at = CASE WHEN $12 THEN $11 ELSE scheduled_at END,
            not_before = CASE WHEN $12 THEN $13 ELSE not_before END,
            transition_actor = $15, transition_reason = $16, attempt_outcome = $17
         WHERE id = $1 AND lease_token = $2 AND status = $14 RETURNING {EXEC_COLS}"
    )
}

/// Binds `complete_sql`'s parameters (works for either backend's query type).
fn bind_completion<'q, DB>(
    q: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    id: &str,
    token: &str,
    report: &Report,
    plan: &CompletionPlan,
    actor: &str,
    now: Timestamp,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i32>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.bind(id.to_owned())
        .bind(token.to_owned())
        .bind(plan.to.as_str().to_owned())
        .bind(report.exit_code)
        .bind(report.stdout.clone())
        .bind(report.stderr.clone())
        .bind(report.stdout_truncated)
        .bind(report.stderr_truncated)
        .bind(report.result.as_ref().map(to_json))
        .bind(plan.error_json.clone())
        .bind(now.millis())
        .bind(plan.retry)
        .bind(now.plus(std::time::Duration::from_secs(plan.backoff)).millis())
        .bind(plan.from.as_str().to_owned())
        .bind(actor.to_owned())
        .bind(plan.reason.clone())
        .bind(report.status.as_str().to_owned())
}
