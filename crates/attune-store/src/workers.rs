//! Workers: registration, heartbeats (which extend the leases the worker still holds), draining,
//! deregistration, and the heartbeat monitor's staleness rule. A worker's status is written only
//! here; its executions' statuses only in `lifecycle`.

use attune_core::{Lease, LeaseState, Runtime, Timestamp, Worker, WorkerStatus};
use serde_json::Value;
use uuid::Uuid;

use crate::{
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
        // `$1`: a JSON array of [execution id, lease token] pairs; `$2` the new expiry; `$3` the
        // worker. Returns the leases still held, with their execution's status.
        let extend = match self.kind {
            // A row that a transition (start, report, cancel) holds is skipped rather than waited
            // for: its lease keeps its expiry until the next beat, well inside its length, and the
            // heartbeat answers from what it read. Waiting made starts and reports queue behind
            // heartbeats and heartbeats behind them (`attune-bench --profile`).
            crate::BackendKind::Postgres => {
                "WITH want AS (SELECT j->>0 AS id, j->>1 AS token FROM jsonb_array_elements($1::jsonb) AS j),
                      mine AS (SELECT e.id, e.lease_token, e.status FROM executions e JOIN want w
                                 ON e.id = w.id AND e.lease_token = w.token
                               WHERE e.worker_id = $3 AND e.status IN ('running', 'canceling')),
                      free AS (SELECT e.id FROM executions e JOIN want w ON e.id = w.id AND e.lease_token = w.token
                               WHERE e.worker_id = $3 AND e.status IN ('running', 'canceling')
                               FOR UPDATE OF e SKIP LOCKED),
                      extended AS (UPDATE executions e SET lease_expires_at = $2 FROM free WHERE e.id = free.id)
                 SELECT id, lease_token, status FROM mine"
            }
            crate::BackendKind::Sqlite => {
                "UPDATE executions SET lease_expires_at = $2
                 WHERE worker_id = $3 AND status IN ('running', 'canceling')
                   AND (id, lease_token) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each($1))
                 RETURNING id, lease_token, status"
            }
        };
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
            // Every lease in one statement: a transaction that updated them one by one held the
            // first rows' locks through as many round trips.
            let pairs: Vec<(String, &str)> =
                leases.iter().map(|l| (l.execution_id.to_string(), l.lease_token.as_str())).collect();
            let held: std::collections::HashMap<(String, String), String> = if pairs.is_empty() {
                Default::default()
            } else {
                sqlx::query(extend)
                .bind(serde_json::to_string(&pairs).expect("lease pairs serialize"))
                .bind(lease_until.millis())
                .bind(&wid)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| Ok(((r.text("id")?, r.text("lease_token")?), r.text("status")?)))
                .collect::<Result<_>>()?
            };
            let out = leases
                .iter()
                .map(|l| {
                    let state = match held.get(&(l.execution_id.to_string(), l.lease_token.clone())).map(String::as_str) {
                        Some("running") => LeaseState::Held,
                        Some(_) => LeaseState::Cancel,
                        None => LeaseState::Revoked,
                    };
                    (l.execution_id, state)
                })
                .collect();
            tx.commit().await?;
            Ok((WorkerStatus::parse(&status).unwrap_or(WorkerStatus::Inactive), out))
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

    /// Marks `inactive` every active worker whose last heartbeat is older than `cutoff`.
    /// Returns the names of the workers it changed.
    pub async fn mark_stale_workers(&self, cutoff: Timestamp, reason: &str) -> Result<Vec<String>> {
        write_pool!(self, p => {
            let names: Vec<String> = sqlx::query_scalar(
                "UPDATE workers SET status = 'inactive', status_reason = $2
                 WHERE status = 'active' AND last_heartbeat < $1 RETURNING name",
            )
            .bind(cutoff.millis())
            .bind(reason)
            .fetch_all(p)
            .await?;
            Ok(names)
        })
    }
}
