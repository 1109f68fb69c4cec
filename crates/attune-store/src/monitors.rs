//! The store side of the monitors: each finds what is overdue and moves it on with a conditional
//! update, so that several server replicas running the same monitor change each row once.

use std::time::Duration;

use attune_core::{ExecutionStatus, Timestamp};
use serde_json::json;
use uuid::Uuid;

use crate::{
    rows::{to_json, uuid, RowExt},
    Result, Store,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// Back in the queue for attempt `next_attempt`.
    Retried {
        next_attempt: u32,
    },
    Abandoned,
    Canceled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredLease {
    pub id: Uuid,
    pub worker: String,
    pub outcome: LeaseOutcome,
}

impl ExpiredLease {
    /// The execution's status afterwards.
    pub fn status(&self) -> ExecutionStatus {
        match self.outcome {
            LeaseOutcome::Retried { .. } => ExecutionStatus::Scheduled,
            LeaseOutcome::Abandoned => ExecutionStatus::Abandoned,
            LeaseOutcome::Canceled => ExecutionStatus::Canceled,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnstartedFailure {
    pub id: Uuid,
    pub age_seconds: u64,
}

impl Store {
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

    /// Running executions whose lease ran out (their worker stopped heartbeating): a new attempt
    /// when the retry policy allows, `abandoned` otherwise, `canceled` if a cancel was pending.
    pub async fn expire_leases(&self, now: Timestamp) -> Result<Vec<ExpiredLease>> {
        let rows: Vec<(String, String)> = read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT id, lease_token FROM executions
                 WHERE status IN ('running', 'canceling') AND lease_expires_at < $1 ORDER BY lease_expires_at LIMIT 500",
            )
            .bind(now.millis())
            .fetch_all(p)
            .await?;
            rows.iter().map(|r| Ok((r.text("id")?, r.text("lease_token")?))).collect::<Result<_>>()?
        });
        let mut out = Vec::new();
        for (ids, token) in rows {
            let id = uuid("executions", &ids)?;
            let lost = self
                .lose_lease(id, &token, now, "worker_heartbeat_monitor", |w| {
                    format!("worker {w} stopped heartbeating; its lease expired")
                })
                .await?;
            if let Some(l) = lost {
                out.push(l);
            }
        }
        Ok(out)
    }

    /// A worker gives back a task it cannot finish (it is shutting down): treated like a lost lease,
    /// at once. Returns `None` when the token is not current (nothing changes).
    pub async fn release(&self, id: Uuid, token: &str, now: Timestamp) -> Result<Option<ExpiredLease>> {
        self.lose_lease(id, token, now, "worker_shutdown", |w| {
            format!("worker {w} shut down before the action finished")
        })
        .await
    }

    /// The current attempt lost its worker: `canceled` if a cancel was pending, a new attempt if
    /// the retry policy allows (avoiding that worker), else `abandoned` and dead-lettered.
    async fn lose_lease(
        &self,
        id: Uuid,
        token: &str,
        now: Timestamp,
        failed_by: &str,
        why: impl Fn(&str) -> String,
    ) -> Result<Option<ExpiredLease>> {
        let Some(e) = self.get_execution(id).await? else { return Ok(None) };
        let ids = id.to_string();
        if !e.status.is_active() {
            return Ok(None);
        }
        let worker = e.worker.clone().unwrap_or_default();
        let (attempt, max_attempts) = (e.attempt, e.max_attempts);
        let (to, outcome) = if e.status == ExecutionStatus::Canceling {
            (ExecutionStatus::Canceled, LeaseOutcome::Canceled)
        } else if attempt < max_attempts {
            (ExecutionStatus::Scheduled, LeaseOutcome::Retried { next_attempt: attempt + 1 })
        } else {
            (ExecutionStatus::Abandoned, LeaseOutcome::Abandoned)
        };
        let cause = why(&worker);
        let reason = match outcome {
            LeaseOutcome::Retried { next_attempt } => {
                format!("{cause}; retrying (attempt {next_attempt} of {max_attempts})")
            }
            _ => cause.clone(),
        };
        let error_value = json!({
            "error": cause,
            "failed_by": failed_by,
            "worker": worker,
            "attempt": attempt,
            "max_attempts": max_attempts,
            "original_status": e.status.as_str(),
        });
        let error = to_json(&error_value);
        let backoff = e.action.as_ref().map(|a| a.retry.backoff_seconds).unwrap_or(0);
        let not_before = now.plus(Duration::from_secs(backoff)).millis();
        let changed = write_pool!(self, p => {
            let mut tx = p.begin().await?;
            let res = sqlx::query(
                "UPDATE executions SET status = $3, updated_at = $4, lease_expires_at = NULL,
                    lease_token = CASE WHEN $3 = 'scheduled' THEN NULL ELSE lease_token END,
                    worker_id = CASE WHEN $3 = 'scheduled' THEN NULL ELSE worker_id END,
                    avoid_worker = CASE WHEN $3 = 'scheduled' THEN worker_id ELSE avoid_worker END,
                    worker_name = CASE WHEN $3 = 'scheduled' THEN NULL ELSE worker_name END,
                    scheduled_at = CASE WHEN $3 = 'scheduled' THEN $4 ELSE scheduled_at END,
                    not_before = CASE WHEN $3 = 'scheduled' THEN $6 ELSE not_before END,
                    finished_at = CASE WHEN $3 = 'scheduled' THEN NULL ELSE $4 END,
                    error = $5, transition_actor = $8, transition_reason = $9, attempt_outcome = 'abandoned'
                 WHERE id = $1 AND lease_token = $2 AND status = $7",
            )
            .bind(&ids)
            .bind(token)
            .bind(to.as_str())
            .bind(now.millis())
            .bind(&error)
            .bind(not_before)
            .bind(e.status.as_str())
            .bind(failed_by)
            .bind(&reason)
            .execute(&mut *tx)
            .await?;
            let changed = res.rows_affected() == 1;
            if changed && to == ExecutionStatus::Abandoned {
                dead_letter!(tx, &ids, e.action_ref.as_str(), "abandoned", Some(&error), now.millis());
            }
            tx.commit().await?;
            changed
        });
        Ok(changed.then_some(ExpiredLease { id, worker, outcome }))
    }

    /// Fails executions that waited in `scheduled` longer than `timeout` (seed 003's execution
    /// timeout monitor), with the seed's error object.
    pub async fn fail_unstarted(&self, timeout: Duration, now: Timestamp) -> Result<Vec<UnstartedFailure>> {
        let cutoff = now.minus(timeout).millis();
        let rows: Vec<(String, i64, String)> = read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT id, scheduled_at, action_ref FROM executions
                 WHERE status = 'scheduled' AND scheduled_at < $1 ORDER BY id LIMIT 500",
            )
            .bind(cutoff)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| Ok((r.text("id")?, r.big("scheduled_at")?, r.text("action_ref")?)))
                .collect::<Result<_>>()?
        });
        let timeout_seconds = timeout.as_secs();
        let mut out = Vec::new();
        for (ids, scheduled_at, action_ref) in rows {
            let age_seconds = now.seconds_since(Timestamp(scheduled_at));
            let message = format!(
                "Execution timeout: worker did not pick up task within {timeout_seconds} seconds (scheduled for {age_seconds} seconds)"
            );
            let error = to_json(&json!({
                "error": message,
                "failed_by": "execution_timeout_monitor",
                "timeout_seconds": timeout_seconds,
                "age_seconds": age_seconds,
                "original_status": "scheduled",
            }));
            let changed = write_pool!(self, p => {
                let mut tx = p.begin().await?;
                let res = sqlx::query(
                    "UPDATE executions SET status = 'failed', error = $2, finished_at = $3, updated_at = $3,
                        lease_token = NULL, lease_expires_at = NULL, delivered_at = NULL,
                        transition_actor = 'execution_timeout_monitor', transition_reason = $5
                     WHERE id = $1 AND status = 'scheduled' AND scheduled_at = $4",
                )
                .bind(&ids)
                .bind(&error)
                .bind(now.millis())
                .bind(scheduled_at)
                .bind(&message)
                .execute(&mut *tx)
                .await?;
                let changed = res.rows_affected() == 1;
                if changed {
                    dead_letter!(tx, &ids, &action_ref, "queue_ttl", Some(&error), now.millis());
                }
                tx.commit().await?;
                changed
            });
            if changed {
                out.push(UnstartedFailure { id: uuid("executions", &ids)?, age_seconds });
            }
        }
        Ok(out)
    }
}
