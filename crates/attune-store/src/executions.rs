//! Executions: accepting new ones (group-committed inserts) and reading them back. Every later
//! status change goes through `lifecycle`; triggers append `execution_history` in the same
//! statement.

use attune_core::{
    output::OutputEncoding, Action, ActionRef, Attempt, Execution, ExecutionStatus, HistoryEntry,
    NewExecution, Timestamp,
};
use uuid::Uuid;

use crate::{
    rows::{json, opt_json, to_json, uuid, RowExt},
    Result, Store, StoreError,
};

pub(crate) const EXEC_COLS: &str = "id, action_ref, action, parameters, status, result, stdout, stderr, \
    stdout_encoding, stderr_encoding, stdout_truncated, stderr_truncated, exit_code, error, worker_id, worker_name, attempt, max_attempts, \
    timeout_seconds, created_at, updated_at, started_at, finished_at, parent, trace_id, enforcement, child_key";

pub(crate) fn encoding(s: String) -> Result<OutputEncoding> {
    OutputEncoding::parse(&s)
        .ok_or_else(|| StoreError::Corrupt { table: "executions", message: format!("encoding {s:?}") })
}

pub(crate) fn exec_from_row(r: &impl RowExt) -> Result<Execution> {
    const T: &str = "executions";
    let status = r.text("status")?;
    let action: Action = json(T, "action", &r.text("action")?)?;
    Ok(Execution {
        id: uuid(T, &r.text("id")?)?,
        action_ref: action.action_ref.clone(),
        parameters: json(T, "parameters", &r.text("parameters")?)?,
        status: ExecutionStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt { table: T, message: format!("status {status:?}") })?,
        result: opt_json(T, "result", r.opt_text("result")?)?,
        stdout: r.text("stdout")?,
        stderr: r.text("stderr")?,
        stdout_encoding: encoding(r.text("stdout_encoding")?)?,
        stderr_encoding: encoding(r.text("stderr_encoding")?)?,
        stdout_truncated: r.boolean("stdout_truncated")?,
        stderr_truncated: r.boolean("stderr_truncated")?,
        exit_code: r.opt_int("exit_code")?,
        error: opt_json(T, "error", r.opt_text("error")?)?,
        worker: r.opt_text("worker_name")?,
        worker_id: r.opt_text("worker_id")?.map(|s| uuid(T, &s)).transpose()?,
        attempt: r.int("attempt")? as u32,
        max_attempts: r.int("max_attempts")? as u32,
        timeout_seconds: r.opt_big("timeout_seconds")?.map(|t| t as u64),
        created_at: Timestamp(r.big("created_at")?),
        updated_at: Timestamp(r.big("updated_at")?),
        started_at: r.opt_big("started_at")?.map(Timestamp),
        finished_at: r.opt_big("finished_at")?.map(Timestamp),
        parent: r.opt_text("parent")?.map(|s| uuid(T, &s)).transpose()?,
        trace_id: r.opt_text("trace_id")?,
        enforcement: r.opt_text("enforcement")?,
        child_key: r.opt_text("child_key")?,
        history: Vec::new(),
        attempts: Vec::new(),
        worker_selector: action.worker_selector.clone(),
        waiting: None,
        pack_digest: action.pack_digest.clone(),
        action: Some(action),
    })
}

/// Inserts accepted executions (`&[(id, &NewExecution)]`) with one statement on `$conn` (a pool
/// or a transaction); the `executions_accepted` trigger writes their history rows.
macro_rules! insert_executions {
    ($conn:expr, $rows:expr, $at:expr) => {{
        let rows: &[(Uuid, &NewExecution)] = $rows;
        let at: i64 = $at;
        if !rows.is_empty() {
            const COLS: usize = 25;
            let values: Vec<String> = (0..rows.len())
                .map(|n| {
                    let b = n * COLS;
                    let p: Vec<String> = (1..=COLS).map(|k| format!("${}", b + k)).collect();
                    // not_before, created_at, updated_at and scheduled_at are all `now`.
                    format!("({}, {}, {}, {}, {})", p[..8].join(", "), p[7], p[7], p[7], p[8..].join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO executions (id, action_ref, queue, action, parameters, status, max_attempts,
                    not_before, created_at, updated_at, scheduled_at, timeout_seconds, parent, trace_id,
                    enforcement, backoff_seconds, transition_actor, transition_reason, scheduled_timeout_ms,
                    selector, concurrency_key, concurrency_limit, rate_key, rate_per_second, rate_burst, queue_rank,
                    child_key, child_applied)
                    VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for (id, new) in rows {
                let (status, reason) = new.accepted();
                q = q
                    .bind(id.to_string())
                    .bind(new.action.action_ref.as_str())
                    .bind(new.queue().as_str())
                    .bind(to_json(&new.action))
                    .bind(to_json(&new.parameters))
                    .bind(status.as_str())
                    .bind(new.max_attempts.max(1) as i32)
                    .bind(at)
                    .bind(new.timeout_seconds.map(|t| t as i64))
                    .bind(new.parent.map(|u| u.to_string()))
                    .bind(new.trace_id.clone())
                    .bind(new.enforces.as_ref().map(|e| e.id.to_string()))
                    .bind(new.action.retry.backoff_seconds as i64)
                    .bind(new.actor.clone())
                    .bind(reason)
                    .bind(new.action.scheduled_timeout_seconds.map(|t| (t * 1000) as i64))
                    .bind((!new.action.worker_selector.is_empty()).then(|| to_json(&new.action.worker_selector)))
                    .bind(new.concurrency.as_ref().map(|(k, _)| k.clone()))
                    .bind(new.concurrency.as_ref().map(|(_, l)| *l as i32))
                    .bind(new.rate.as_ref().map(|(k, ..)| k.clone()))
                    .bind(new.rate.as_ref().map(|(_, r, _)| *r))
                    .bind(new.rate.as_ref().map(|(.., b)| *b as i32))
                    .bind(attune_core::action::queue_rank(at, new.action.priority))
                    .bind(new.child_key.clone())
                    .bind(new.child_key.is_none());
            }
            q.execute($conn).await?;
        }
    }};
}
pub(crate) use insert_executions;

/// See `Store::metrics_snapshot`.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// (action_ref, status, count)
    pub executions: Vec<(String, String, u64)>,
    /// (queue, waiting and undelivered, oldest scheduled_at)
    pub queues: Vec<(String, u64, Option<Timestamp>)>,
    /// (cause, count)
    pub dead_letters: Vec<(String, u64)>,
    /// (action_ref, waiting executions under a concurrency or rate limit)
    pub limited_waiting: Vec<(String, u64)>,
}

const QUEUE_DEPTHS: &str = "SELECT queue, COUNT(*) AS n, MIN(scheduled_at) AS oldest FROM executions
     WHERE status = 'scheduled' AND lease_token IS NULL GROUP BY queue";

fn queue_depth(r: &impl RowExt) -> Result<(String, u64, Option<Timestamp>)> {
    Ok((r.text("queue")?, r.big("n")? as u64, r.opt_big("oldest")?.map(Timestamp)))
}

/// The row's `status` column.
fn status_col(r: &impl RowExt) -> Result<ExecutionStatus> {
    let s = r.text("status")?;
    ExecutionStatus::parse(&s)
        .ok_or_else(|| StoreError::Corrupt { table: "executions", message: format!("status {s:?}") })
}

#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub status: Option<ExecutionStatus>,
    pub action_ref: Option<ActionRef>,
    /// Only executions created before this one (ids are time-ordered): the next page.
    pub before: Option<Uuid>,
    /// Only executions created after this one (with a time's lowest id: created since then).
    pub after: Option<Uuid>,
    pub limit: u32,
    /// Only executions with this parent (a workflow's tasks).
    pub parent: Option<Uuid>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `before` to get the next page; absent on the last page.
    pub next: Option<Uuid>,
}

impl Store {
    /// Persists a new execution as `requested`, then `scheduled` on its runtime's queue.
    pub async fn create_execution(&self, new: NewExecution, now: Timestamp) -> Result<Execution> {
        let mut v = self.create_executions(vec![new], now).await?;
        v.pop().expect("one execution in, one out")
    }

    /// Accepts several new executions with one `INSERT` (one commit); the `executions_accepted`
    /// trigger writes their history rows. Used by the server to group concurrent submissions. A
    /// submission that requeues a dead letter marks it requeued in the same transaction, and is
    /// refused (`AlreadyDone`) if another requeue got there first. One result per submission.
    pub async fn create_executions(
        &self,
        news: Vec<NewExecution>,
        now: Timestamp,
    ) -> Result<Vec<Result<Execution>>> {
        if news.is_empty() {
            return Ok(Vec::new());
        }
        let at = now.millis();
        let ids: Vec<Uuid> = news.iter().map(|_| Uuid::now_v7()).collect();
        let claims = news.iter().any(|n| n.requeue_of.is_some() || n.enforces.is_some());
        let mut refused: Vec<Option<StoreError>> = news.iter().map(|_| None).collect();
        write_pool!(self, p => {
            let mut tx = if claims { Some(p.begin().await?) } else { None };
            if let Some(tx) = tx.as_mut() {
                for (i, new) in news.iter().enumerate() {
                    if let Some(e) = &new.enforces {
                        // The (event, rule) pair is enforced once: by this execution, or it
                        // was already and this one is not created. A buffered enforcement
                        // (`overlap: buffer_one`) is the one exception: it becomes this match.
                        let recorded = sqlx::query(
                            "INSERT INTO enforcements (id, event_id, rule_ref, outcome, execution_id, created_at)
                             VALUES ($1, $2, $3, 'matched', $4, $5) ON CONFLICT (event_id, rule_ref) DO UPDATE
                             SET outcome = 'matched', execution_id = excluded.execution_id, reason = NULL
                             WHERE enforcements.outcome = 'buffered'",
                        )
                        .bind(e.id.to_string())
                        .bind(e.event_id.to_string())
                        .bind(e.rule_ref.as_str())
                        .bind(ids[i].to_string())
                        .bind(at)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected();
                        if recorded == 0 {
                            refused[i] = Some(StoreError::AlreadyDone(format!(
                                "event {} was already enforced by rule {}",
                                e.event_id, e.rule_ref
                            )));
                        }
                    }
                    let Some(dl) = new.requeue_of else { continue };
                    let claimed = sqlx::query(
                        "UPDATE dead_letters SET requeued_at = $2, requeued_as = $3 WHERE id = $1 AND requeued_at IS NULL",
                    )
                    .bind(dl.to_string())
                    .bind(at)
                    .bind(ids[i].to_string())
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                    if claimed == 0 {
                        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM dead_letters WHERE id = $1")
                            .bind(dl.to_string())
                            .fetch_optional(&mut **tx)
                            .await?;
                        refused[i] = Some(match exists {
                            Some(_) => StoreError::AlreadyDone(format!("dead letter {dl} was already requeued")),
                            None => StoreError::NotFound { what: "dead letter", id: dl.to_string() },
                        });
                    }
                }
            }
            let accepted: Vec<(Uuid, &NewExecution)> =
                (0..news.len()).filter(|i| refused[*i].is_none()).map(|i| (ids[i], &news[i])).collect();
            match tx.as_mut() {
                Some(tx) => insert_executions!(&mut **tx, &accepted, at),
                None => insert_executions!(p, &accepted, at),
            }
            if let Some(tx) = tx {
                tx.commit().await?;
            }
        });
        // Everything the rows hold is known here; no need to read them back.
        Ok(ids
            .into_iter()
            .zip(news)
            .zip(refused)
            .map(|((id, new), refused)| match refused {
                Some(e) => Err(e),
                None => Ok(accepted_execution(id, new, now)),
            })
            .collect())
    }

    pub async fn get_execution(&self, id: Uuid) -> Result<Option<Execution>> {
        read_pool!(self, p => {
            let row = sqlx::query(&format!("SELECT {EXEC_COLS} FROM executions WHERE id = $1"))
                .bind(id.to_string())
                .fetch_optional(p)
                .await?;
            row.map(|r| exec_from_row(&r)).transpose()
        })
    }

    /// The execution with its full history and its attempts, oldest first.
    pub async fn get_execution_with_history(&self, id: Uuid) -> Result<Option<Execution>> {
        let Some(mut e) = self.get_execution(id).await? else { return Ok(None) };
        e.history = self.execution_history(id).await?;
        e.attempts = self.execution_attempts(id).await?;
        Ok(Some(e))
    }

    pub async fn execution_attempts(&self, id: Uuid) -> Result<Vec<Attempt>> {
        const T: &str = "execution_attempts";
        read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT attempt, worker_id, worker_name, started_at, finished_at, status, exit_code, error
                 FROM execution_attempts WHERE execution_id = $1 ORDER BY attempt",
            )
            .bind(id.to_string())
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    let st = r.text("status")?;
                    Ok(Attempt {
                        attempt: r.int("attempt")? as u32,
                        worker: r.opt_text("worker_name")?,
                        worker_id: r.opt_text("worker_id")?.map(|s| uuid(T, &s)).transpose()?,
                        started_at: Timestamp(r.big("started_at")?),
                        finished_at: r.opt_big("finished_at")?.map(Timestamp),
                        status: ExecutionStatus::parse(&st)
                            .ok_or_else(|| StoreError::Corrupt { table: T, message: format!("status {st:?}") })?,
                        exit_code: r.opt_int("exit_code")?,
                        error: opt_json(T, "error", r.opt_text("error")?)?,
                    })
                })
                .collect()
        })
    }

    pub async fn execution_history(&self, id: Uuid) -> Result<Vec<HistoryEntry>> {
        read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT at, from_status, to_status, actor, reason, attempt FROM execution_history
                 WHERE execution_id = $1 ORDER BY id",
            )
            .bind(id.to_string())
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    let st = |s: String| {
                        ExecutionStatus::parse(&s).ok_or_else(|| StoreError::Corrupt {
                            table: "execution_history",
                            message: format!("status {s:?}"),
                        })
                    };
                    Ok(HistoryEntry {
                        at: Timestamp(r.big("at")?),
                        from: r.opt_text("from_status")?.map(st).transpose()?,
                        to: st(r.text("to_status")?)?,
                        actor: r.text("actor")?,
                        reason: r.opt_text("reason")?,
                        attempt: r.int("attempt")? as u32,
                    })
                })
                .collect()
        })
    }

    /// Newest first.
    pub async fn list_executions(&self, f: &ExecutionFilter) -> Result<Page<Execution>> {
        let limit = f.limit.clamp(1, 1000);
        let mut sql = format!("SELECT {EXEC_COLS} FROM executions WHERE 1 = 1");
        let mut n = 0;
        let mut next_param = || {
            n += 1;
            format!("${n}")
        };
        if f.status.is_some() {
            sql += &format!(" AND status = {}", next_param());
        }
        if f.action_ref.is_some() {
            sql += &format!(" AND action_ref = {}", next_param());
        }
        if f.before.is_some() {
            sql += &format!(" AND id < {}", next_param());
        }
        if f.after.is_some() {
            sql += &format!(" AND id > {}", next_param());
        }
        if f.parent.is_some() {
            sql += &format!(" AND parent = {}", next_param());
        }
        sql += &format!(" ORDER BY id DESC LIMIT {}", next_param());
        let items: Vec<Execution> = read_pool!(self, p => {
            let mut q = sqlx::query(&sql);
            if let Some(s) = f.status {
                q = q.bind(s.as_str());
            }
            if let Some(a) = &f.action_ref {
                q = q.bind(a.as_str());
            }
            if let Some(b) = f.before {
                q = q.bind(b.to_string());
            }
            if let Some(a) = f.after {
                q = q.bind(a.to_string());
            }
            if let Some(parent) = f.parent {
                q = q.bind(parent.to_string());
            }
            let rows = q.bind(limit as i64 + 1).fetch_all(p).await?;
            rows.iter().map(exec_from_row).collect::<Result<_>>()?
        });
        let mut items = items;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|e| e.id)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// What `/metrics` reports from the database: executions by (action, status), the queues'
    /// depth and oldest waiting task, dead letters by cause.
    pub async fn metrics_snapshot(&self) -> Result<MetricsSnapshot> {
        read_pool!(self, p => {
            let mut snap = MetricsSnapshot::default();
            for r in sqlx::query("SELECT action_ref, status, COUNT(*) AS n FROM executions GROUP BY action_ref, status")
                .fetch_all(p)
                .await?
            {
                snap.executions.push((r.text("action_ref")?, r.text("status")?, r.big("n")? as u64));
            }
            for r in sqlx::query(QUEUE_DEPTHS).fetch_all(p).await? {
                snap.queues.push(queue_depth(&r)?);
            }
            for r in sqlx::query("SELECT cause, COUNT(*) AS n FROM dead_letters GROUP BY cause").fetch_all(p).await? {
                snap.dead_letters.push((r.text("cause")?, r.big("n")? as u64));
            }
            for r in sqlx::query(
                "SELECT action_ref, COUNT(*) AS n FROM executions WHERE status = 'scheduled' AND lease_token IS NULL
                   AND (concurrency_key IS NOT NULL OR rate_key IS NOT NULL) GROUP BY action_ref",
            )
            .fetch_all(p)
            .await?
            {
                snap.limited_waiting.push((r.text("action_ref")?, r.big("n")? as u64));
            }
            Ok(snap)
        })
    }

    /// Each queue's waiting (undelivered) tasks and when the oldest of them was scheduled.
    pub async fn queue_depths(&self) -> Result<Vec<(String, u64, Option<Timestamp>)>> {
        read_pool!(self, p => {
            sqlx::query(QUEUE_DEPTHS).fetch_all(p).await?.iter().map(queue_depth).collect()
        })
    }

    /// Executions that ended in each of `minutes` minutes from `since` (rounded down to its
    /// minute), counted by final status; oldest minute first, and within a minute by status. Read
    /// from `ended_per_minute`, which the statement ending executions adds to: a few rows per
    /// minute however many executions are stored. An execution requeued after it ended and ended
    /// again counts in both minutes.
    pub async fn finished_per_minute(
        &self,
        since: Timestamp,
        minutes: u32,
    ) -> Result<Vec<(i64, ExecutionStatus, u64)>> {
        let from = since.0 - since.0.rem_euclid(60_000);
        read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT minute, status, CAST(SUM(n) AS BIGINT) AS n FROM ended_per_minute
                 WHERE minute >= $1 AND minute < $2 GROUP BY minute, status ORDER BY minute, status",
            )
            .bind(from)
            .bind(from + i64::from(minutes) * 60_000)
            .fetch_all(p)
            .await?;
            rows.iter().map(|r| Ok((r.big("minute")?, status_col(r)?, r.big("n")?.max(0) as u64))).collect()
        })
    }

    /// Forgets the per-minute counts of executions that ended before `before` (the overview
    /// shows the last 15 minutes; `finished_per_minute` knows nothing earlier than this).
    pub async fn prune_ended_counts(&self, before: Timestamp) -> Result<u64> {
        write_pool!(self, p => {
            let done = sqlx::query("DELETE FROM ended_per_minute WHERE minute < $1").bind(before.0).execute(p).await?;
            Ok(done.rows_affected())
        })
    }

    /// How many executions are in each status that has not ended (few, and read from the status
    /// index, unlike the ended ones). On PostgreSQL the plan is held to an index scan: until a
    /// vacuum, the index still lists every earlier version of every execution (each passed
    /// through `scheduled` and `running`), and a bitmap scan visits all of their heap pages on
    /// every call (about 200 ms with 100,000 executions stored), where an index scan marks the
    /// dead entries on its first pass and skips them from then on.
    pub async fn count_unfinished(&self) -> Result<Vec<(ExecutionStatus, u64)>> {
        let pg = self.kind == crate::BackendKind::Postgres;
        read_pool!(self, p => {
            let mut tx = p.begin().await?;
            if pg {
                sqlx::query("SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true)")
                    .execute(&mut *tx)
                    .await?;
            }
            let rows = sqlx::query(
                "SELECT status, COUNT(*) AS n FROM executions
                 WHERE status IN ('requested', 'scheduled', 'pending', 'running', 'canceling') GROUP BY status",
            )
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.iter().map(|r| Ok((status_col(r)?, r.big("n")? as u64))).collect()
        })
    }

    /// How many executions are in each status.
    pub async fn count_by_status(&self) -> Result<Vec<(ExecutionStatus, u64)>> {
        read_pool!(self, p => {
            let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM executions GROUP BY status").fetch_all(p).await?;
            rows.iter()
                .map(|r| Ok((status_col(r)?, r.big("n")? as u64)))
                .collect()
        })
    }
}

/// A just-accepted execution as its row holds it.
pub(crate) fn accepted_execution(id: Uuid, new: NewExecution, now: Timestamp) -> Execution {
    let (status, _) = new.accepted();
    Execution {
        id,
        action_ref: new.action.action_ref.clone(),
        parameters: new.parameters,
        status,
        result: None,
        stdout: String::new(),
        stderr: String::new(),
        stdout_encoding: OutputEncoding::Utf8,
        stderr_encoding: OutputEncoding::Utf8,
        stdout_truncated: false,
        stderr_truncated: false,
        exit_code: None,
        error: None,
        worker: None,
        worker_id: None,
        attempt: 0,
        max_attempts: new.max_attempts.max(1),
        timeout_seconds: new.timeout_seconds,
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
        parent: new.parent,
        trace_id: new.trace_id,
        enforcement: new.enforces.as_ref().map(|e| e.id.to_string()),
        child_key: new.child_key.clone(),
        history: Vec::new(),
        attempts: Vec::new(),
        worker_selector: new.action.worker_selector.clone(),
        waiting: None,
        pack_digest: new.action.pack_digest.clone(),
        action: Some(new.action),
    }
}
