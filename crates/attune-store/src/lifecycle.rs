//! Applying lifecycle decisions: the one place that writes an execution's status. `drive` reads
//! what the decisions need (`Stored`), asks the caller's pure decision (`attune_core::lifecycle`)
//! about each execution, and applies the resulting `Change`s with `apply`: one conditional
//! `UPDATE` per change (changes that differ only in their execution share one, `id IN (…)`), in
//! one transaction with the dead letters they cause. The statement is guarded by exactly what the
//! decision read; an execution that changed in between is read and decided again.
//!
//! The convenience methods below (`start`, `complete`, `cancel_execution`, the monitors' …) are
//! `drive` with one decision each.

use std::{collections::HashMap, time::Duration};

use attune_core::{
    lifecycle::{self, Change, Decision, ErrorChange, Holder, LeaseChange, LeaseLoss, Refusal, Stored},
    Execution, ExecutionStatus, Report, Timestamp,
};
use uuid::Uuid;

use crate::{
    backend::in_list,
    rows::{to_json, uuid, RowExt},
    BackendKind, Result, Store, StoreError,
};

/// How an applied change left its execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub id: Uuid,
    pub from: ExecutionStatus,
    pub status: ExecutionStatus,
    pub attempt: u32,
    pub action_ref: String,
    /// The worker that held the execution before the change.
    pub worker: Option<String>,
    pub scheduled_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// The change answered a report the server refused, for this reason.
    pub refused_report: Option<String>,
    /// The execution's parent (a workflow's task run: the workflow's execution).
    pub parent: Option<Uuid>,
}

/// What became of one execution's event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Driven {
    Applied(Applied),
    /// Nothing to change (the event was already applied, or no longer concerns it); its status.
    Unchanged(ExecutionStatus),
}

impl Driven {
    pub fn status(&self) -> ExecutionStatus {
        match self {
            Driven::Applied(a) => a.status,
            Driven::Unchanged(s) => *s,
        }
    }
}

/// Rounds of read-decide-apply before an execution that keeps changing is given up on.
const ROUNDS: usize = 5;

fn refused(id: Uuid, r: Refusal) -> StoreError {
    match r {
        Refusal::Stale(message) => StoreError::StaleLease { id: id.to_string(), message },
        Refusal::Foreign(message) => StoreError::Forbidden(format!("execution {id}: {message}")),
        Refusal::Invalid(source) => StoreError::Transition { id: id.to_string(), source },
    }
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

/// The one statement that changes an execution's status. `{ids}` is the condition on the
/// executions the change applies to (`backend::in_list`, parameter 29); everything else is a
/// parameter too, so the text never changes.
const APPLY: &str = "UPDATE executions SET status = $1, attempt = $2, updated_at = $3,
        transition_actor = $4, transition_reason = $5, attempt_outcome = $6,
        started_at = CASE WHEN $7 THEN $3 ELSE started_at END,
        finished_at = CASE WHEN $8 THEN $3 ELSE NULL END,
        error = CASE WHEN $9 THEN $10 ELSE error END,
        lease_token = CASE WHEN $11 = 'dropped' THEN NULL ELSE lease_token END,
        lease_expires_at = CASE $11 WHEN 'keep' THEN lease_expires_at WHEN 'until' THEN $12 ELSE NULL END,
        delivered_at = NULL,
        scheduled_at = CASE WHEN $13 THEN $3 ELSE scheduled_at END,
        not_before = CASE WHEN $13 THEN $14 ELSE not_before END,
        avoid_worker = CASE WHEN $13 THEN worker_id ELSE avoid_worker END,
        worker_id = CASE WHEN $13 THEN NULL ELSE worker_id END,
        worker_name = CASE WHEN $13 THEN NULL ELSE worker_name END,
        exit_code = CASE WHEN $15 THEN $16 ELSE exit_code END,
        stdout = CASE WHEN $15 THEN $17 ELSE stdout END,
        stderr = CASE WHEN $15 THEN $18 ELSE stderr END,
        stdout_truncated = CASE WHEN $15 THEN $19 ELSE stdout_truncated END,
        stderr_truncated = CASE WHEN $15 THEN $20 ELSE stderr_truncated END,
        result = CASE WHEN $15 THEN $21 ELSE result END,
        stdout_encoding = CASE WHEN $15 THEN $27 ELSE stdout_encoding END,
        stderr_encoding = CASE WHEN $15 THEN $28 ELSE stderr_encoding END
    WHERE {ids} AND status = $22 AND attempt = $23
        AND ($24 IS NULL OR lease_token = $24) AND ($25 IS NULL OR worker_id = $25)
        AND ($26 IS NULL OR lease_expires_at = $26)
    RETURNING id, status, attempt, action_ref, scheduled_at, started_at, finished_at, parent";

/// Executions that end are counted in `ended_per_minute` (the console's overview) in the same
/// transaction. A lone statement on PostgreSQL counts its own, `APPLY` inside this (`$30` the
/// minute, `$31` the shard); in a transaction the counts are added once, after every change, by
/// `count_ended`, rows in key order: a transaction takes counter rows only last and in one order,
/// so two of them never wait on each other in a cycle.
const APPLY_COUNTING_ENDED: &str = "WITH u AS ({apply}),
    c AS (INSERT INTO ended_per_minute (minute, status, shard, n) SELECT $30, $1, $31, COUNT(*) FROM u
          HAVING COUNT(*) > 0
          ON CONFLICT (minute, status, shard) DO UPDATE SET n = ended_per_minute.n + excluded.n)
    SELECT * FROM u";

/// Rows per minute and outcome that concurrent PostgreSQL transactions spread their counts over
/// (SQLite has one writer, so one shard).
const ENDED_SHARDS: u128 = 8;

/// The statement adding `n` counts (in key order) to `ended_per_minute`.
pub(crate) fn count_ended(n: usize) -> String {
    let rows: Vec<String> =
        (0..n).map(|i| format!("(${}, ${}, ${}, ${})", 4 * i + 1, 4 * i + 2, 4 * i + 3, 4 * i + 4)).collect();
    format!(
        "INSERT INTO ended_per_minute (minute, status, shard, n) VALUES {}
         ON CONFLICT (minute, status, shard) DO UPDATE SET n = ended_per_minute.n + excluded.n",
        rows.join(", ")
    )
}

/// Binds a change's parameters to `APPLY` (for either backend's query type).
pub(crate) fn bind_change<'q, DB>(
    q: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    c: &'q Change,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i32>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let (set_error, error) = match &c.error {
        ErrorChange::Keep => (false, None),
        ErrorChange::Set(e) => (true, e.as_ref().map(to_json)),
    };
    let (lease, until) = match c.lease {
        LeaseChange::Keep => ("keep", None),
        LeaseChange::Until(t) => ("until", Some(t.millis())),
        LeaseChange::Ended => ("ended", None),
        LeaseChange::Dropped => ("dropped", None),
    };
    let out = c.output.as_ref();
    q.bind(c.to.as_str())
        .bind(c.attempt as i32)
        .bind(c.at.millis())
        .bind(c.actor.as_str())
        .bind(c.reason.as_deref())
        .bind(c.attempt_outcome.map(|s| s.as_str()))
        .bind(c.starts_attempt())
        .bind(c.is_terminal())
        .bind(set_error)
        .bind(error)
        .bind(lease)
        .bind(until)
        .bind(c.requeue_at.is_some())
        .bind(c.requeue_at.map(Timestamp::millis))
        .bind(out.is_some())
        .bind(out.and_then(|o| o.exit_code))
        .bind(out.map(|o| o.stdout.as_str()).unwrap_or_default())
        .bind(out.map(|o| o.stderr.as_str()).unwrap_or_default())
        .bind(out.is_some_and(|o| o.stdout_truncated))
        .bind(out.is_some_and(|o| o.stderr_truncated))
        .bind(out.and_then(|o| o.result.as_ref()).map(to_json))
        .bind(c.guard.status.as_str())
        .bind(c.guard.attempt as i32)
        .bind(c.guard.lease_token.as_deref())
        .bind(c.guard.worker.map(|w| w.to_string()))
        .bind(c.guard.lease_expires_at.map(Timestamp::millis))
        .bind(out.map(|o| o.stdout_encoding.as_str()).unwrap_or("utf-8"))
        .bind(out.map(|o| o.stderr_encoding.as_str()).unwrap_or("utf-8"))
}

/// Changes that differ only in their execution, applied by one statement.
struct Group<'a> {
    change: &'a Change,
    ids: Vec<Uuid>,
    /// Whether the change carries output (those are never grouped: reports differ).
    single: bool,
}

fn group(changes: &[Change]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    for c in changes {
        let single = c.output.is_some();
        let same = |g: &&mut Group<'_>| {
            !g.single && !single && {
                let mut probe = g.change.clone();
                probe.id = c.id;
                probe == *c
            }
        };
        match groups.iter_mut().find(|g| same(g)) {
            Some(g) => g.ids.push(c.id),
            None => groups.push(Group { change: c, ids: vec![c.id], single }),
        }
    }
    groups
}

/// What `APPLY` returned for one execution, as the change's result (`stored`: what was read
/// before it, for the worker that held it).
pub(crate) fn applied_from<R: RowExt>(
    r: &R,
    change: &Change,
    stored: &HashMap<Uuid, Stored>,
) -> Result<Applied> {
    let id = uuid("executions", &r.text("id")?)?;
    Ok(Applied {
        id,
        from: change.guard.status,
        status: change.to,
        attempt: r.int("attempt")? as u32,
        action_ref: r.text("action_ref")?,
        worker: stored.get(&id).and_then(|s| s.worker_name.clone()),
        scheduled_at: ts(r.opt_big("scheduled_at")?),
        started_at: ts(r.opt_big("started_at")?),
        finished_at: ts(r.opt_big("finished_at")?),
        refused_report: change.refused_report.clone(),
        parent: r.opt_text("parent")?.map(|p| uuid("executions", &p)).transpose()?,
    })
}

/// Applies one change inside a caller's transaction (`$conn`: the transaction's connection), as
/// `Store::apply` would: the guarded `APPLY`. `None` when the guard no longer held (nothing was
/// written). A change that ended the execution must then be counted with `count_ended_in!`, as
/// the transaction's last statement (the lock order `Store::apply` keeps).
macro_rules! apply_in {
    ($store:expr, $conn:expr, $change:expr) => {{
        let change: &attune_core::lifecycle::Change = $change;
        let (cond, id) = crate::backend::in_list($store.kind, "id", 29, &[change.id]);
        let sql = crate::lifecycle::apply_sql(&cond);
        let rows =
            crate::lifecycle::bind_change(sqlx::query(&sql), change).bind(id).fetch_all(&mut *$conn).await?;
        rows.first().map(|r| crate::lifecycle::applied_from(r, change, &Default::default())).transpose()?
    }};
}
pub(crate) use apply_in;

/// Counts an execution `change` ended in `ended_per_minute`, inside the caller's transaction.
macro_rules! count_ended_in {
    ($store:expr, $conn:expr, $change:expr) => {{
        let change: &attune_core::lifecycle::Change = $change;
        let (minute, shard) = crate::lifecycle::ended_slot(change, $store.kind);
        sqlx::query(&crate::lifecycle::count_ended(1))
            .bind(minute)
            .bind(change.to.as_str())
            .bind(shard)
            .bind(1i64)
            .execute(&mut *$conn)
            .await?;
    }};
}
pub(crate) use count_ended_in;

pub(crate) fn apply_sql(cond: &str) -> String {
    APPLY.replace("{ids}", cond)
}

/// The minute and shard of `ended_per_minute` a change that ends an execution counts in.
pub(crate) fn ended_slot(c: &Change, kind: BackendKind) -> (i64, i32) {
    let shard = if kind == BackendKind::Postgres { (c.id.as_u128() % ENDED_SHARDS) as i32 } else { 0 };
    (c.at.millis() - c.at.millis().rem_euclid(60_000), shard)
}

impl Store {
    /// What the decisions need to know about these executions (missing ones are left out).
    pub async fn read_stored(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Stored>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let (cond, list) = in_list(self.kind, "e.id", 1, ids);
        let sql = format!(
            "SELECT e.id, e.status, e.attempt, e.max_attempts, e.backoff_seconds, e.lease_token,
                    e.lease_expires_at, e.worker_id, e.worker_name, e.scheduled_at, e.scheduled_timeout_ms,
                    w.last_heartbeat
             FROM executions e LEFT JOIN workers w ON w.id = e.worker_id WHERE {cond}"
        );
        const T: &str = "executions";
        read_pool!(self, p => {
            let rows = sqlx::query(&sql).bind(list).fetch_all(p).await?;
            rows.iter()
                .map(|r| {
                    let status = r.text("status")?;
                    let s = Stored {
                        id: uuid(T, &r.text("id")?)?,
                        status: ExecutionStatus::parse(&status)
                            .ok_or_else(|| StoreError::Corrupt { table: T, message: format!("status {status:?}") })?,
                        attempt: r.int("attempt")? as u32,
                        max_attempts: r.int("max_attempts")? as u32,
                        backoff_seconds: r.big("backoff_seconds")?.max(0) as u64,
                        lease_token: r.opt_text("lease_token")?,
                        lease_expires_at: ts(r.opt_big("lease_expires_at")?),
                        worker_id: r.opt_text("worker_id")?.map(|w| uuid(T, &w)).transpose()?,
                        worker_name: r.opt_text("worker_name")?,
                        worker_heartbeat: ts(r.opt_big("last_heartbeat")?),
                        scheduled_at: ts(r.opt_big("scheduled_at")?),
                        scheduled_timeout: r
                            .opt_big("scheduled_timeout_ms")?
                            .map(|ms| std::time::Duration::from_millis(ms.max(0) as u64)),
                    };
                    Ok((s.id, s))
                })
                .collect()
        })
    }

    /// Applies decided changes in one transaction: each as one conditional `UPDATE` (the guard),
    /// with the dead letters the applied ones cause. Returns the executions that changed; a change
    /// whose guard no longer held is absent (nothing was written for it).
    pub async fn apply(
        &self,
        changes: &[Change],
        stored: &HashMap<Uuid, Stored>,
    ) -> Result<HashMap<Uuid, Applied>> {
        let mut applied = HashMap::new();
        if changes.is_empty() {
            return Ok(applied);
        }
        let groups = group(changes);
        let dead = changes.iter().any(|c| c.dead_letter.is_some());
        let pg = self.kind == BackendKind::Postgres;
        let ending = changes.iter().any(|c| c.is_terminal());
        let shard = if pg { (changes[0].id.as_u128() % ENDED_SHARDS) as i32 } else { 0 };
        // Executions ended, by minute and outcome, for `count_ended` (sorted: the lock order).
        let mut ended: std::collections::BTreeMap<(i64, &'static str), i64> = Default::default();
        write_pool!(self, p => {
            // One statement needs no explicit transaction (saves two round trips per call); on
            // SQLite counting what ended is a second statement, so it needs one.
            let alone = groups.len() == 1 && !dead && (pg || !ending);
            let mut tx = if alone { None } else { Some(p.begin().await?) };
            for g in &groups {
                let (cond, list) = in_list(self.kind, "id", 29, &g.ids);
                let ends = g.change.is_terminal();
                let minute = g.change.at.millis() - g.change.at.millis().rem_euclid(60_000);
                let apply = APPLY.replace("{ids}", &cond);
                let inline = ends && tx.is_none();
                let sql = if inline { APPLY_COUNTING_ENDED.replace("{apply}", &apply) } else { apply };
                let mut q = bind_change(sqlx::query(&sql), g.change).bind(list);
                if inline {
                    q = q.bind(minute).bind(shard);
                }
                let rows = match tx.as_mut() {
                    Some(tx) => q.fetch_all(&mut **tx).await?,
                    None => q.fetch_all(p).await?,
                };
                if ends && !inline && !rows.is_empty() {
                    *ended.entry((minute, g.change.to.as_str())).or_default() += rows.len() as i64;
                }
                for r in &rows {
                    let a = applied_from(r, g.change, stored)?;
                    let id = a.id;
                    if let (Some(cause), Some(tx)) = (g.change.dead_letter, tx.as_mut()) {
                        let error = match &g.change.error {
                            ErrorChange::Set(e) => e.as_ref().map(to_json),
                            ErrorChange::Keep => None,
                        };
                        sqlx::query(
                            "INSERT INTO dead_letters (id, execution_id, action_ref, cause, error, created_at)
                             VALUES ($1, $2, $3, $4, $5, $6)",
                        )
                        .bind(Uuid::now_v7().to_string())
                        .bind(id.to_string())
                        .bind(&a.action_ref)
                        .bind(cause.as_str())
                        .bind(error)
                        .bind(g.change.at.millis())
                        .execute(&mut **tx)
                        .await?;
                    }
                    applied.insert(id, a);
                }
            }
            if let Some(mut tx) = tx {
                if !ended.is_empty() {
                    let sql = count_ended(ended.len());
                    let mut q = sqlx::query(&sql);
                    for ((minute, status), n) in &ended {
                        q = q.bind(*minute).bind(*status).bind(shard).bind(*n);
                    }
                    q.execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
        });
        Ok(applied)
    }

    /// Reads the executions, asks `decide` about each, applies what it decided; executions that
    /// changed between the read and the write are read and decided again. One result per id, in
    /// order.
    pub async fn drive(
        &self,
        ids: &[Uuid],
        decide: impl Fn(&Stored) -> Decision,
    ) -> Result<Vec<(Uuid, Result<Driven>)>> {
        self.drive_items(ids, |id| *id, |_, s| decide(s)).await
    }

    /// `drive` for one execution.
    async fn drive_one(&self, id: Uuid, decide: impl Fn(&Stored) -> Decision) -> Result<Driven> {
        let mut v = self.drive(&[id], decide).await?;
        v.pop().map(|(_, r)| r).unwrap_or(Err(StoreError::NotFound { what: "execution", id: id.to_string() }))
    }

    /// `drive` over events (`items`) that may name the same execution more than once, decided in
    /// their order: an event is decided on the state the previous one left. Each round reads every
    /// execution with events left once, decides its events until one changes something, and
    /// applies those changes in one transaction; so a batch of many events about one execution
    /// costs a round only per event that changes it. An event whose change keeps racing is given
    /// up after `ROUNDS` tries.
    async fn drive_items<T>(
        &self,
        items: &[T],
        id_of: impl Fn(&T) -> Uuid,
        decide: impl Fn(&T, &Stored) -> Decision,
    ) -> Result<Vec<(Uuid, Result<Driven>)>> {
        let mut out: Vec<Option<Result<Driven>>> = (0..items.len()).map(|_| None).collect();
        // Per execution, its events still to decide, in order.
        let mut queues: HashMap<Uuid, std::collections::VecDeque<usize>> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            queues.entry(id_of(item)).or_default().push_back(i);
        }
        let mut tries = vec![0usize; items.len()];
        while !queues.is_empty() {
            let ids: Vec<Uuid> = queues.keys().copied().collect();
            let stored = self.read_stored(&ids).await?;
            let mut changes = Vec::new();
            let mut waiting: HashMap<Uuid, usize> = HashMap::new();
            for id in &ids {
                let queue = queues.get_mut(id).expect("queued");
                let Some(s) = stored.get(id) else {
                    for i in queue.drain(..) {
                        out[i] = Some(Err(StoreError::NotFound { what: "execution", id: id.to_string() }));
                    }
                    continue;
                };
                while let Some(&i) = queue.front() {
                    match decide(&items[i], s) {
                        Decision::Apply(c) => {
                            changes.push(*c);
                            waiting.insert(*id, i);
                            break;
                        }
                        Decision::Unchanged => out[i] = Some(Ok(Driven::Unchanged(s.status))),
                        Decision::Refuse(r) => out[i] = Some(Err(refused(*id, r))),
                    }
                    queue.pop_front();
                }
            }
            let mut applied = self.apply(&changes, &stored).await?;
            for (id, i) in waiting {
                match applied.remove(&id) {
                    Some(a) => {
                        out[i] = Some(Ok(Driven::Applied(a)));
                        queues.get_mut(&id).expect("queued").pop_front();
                    }
                    None => {
                        // The execution changed between the read and the write: decide again.
                        tries[i] += 1;
                        if tries[i] >= ROUNDS {
                            out[i] = Some(Err(StoreError::StaleLease {
                                id: id.to_string(),
                                message: "the execution kept changing while the event was applied".into(),
                            }));
                            queues.get_mut(&id).expect("queued").pop_front();
                        }
                    }
                }
            }
            queues.retain(|_, q| !q.is_empty());
        }
        Ok(items
            .iter()
            .zip(out)
            .map(|(item, r)| {
                let id = id_of(item);
                (id, r.unwrap_or_else(|| Err(StoreError::NotFound { what: "execution", id: id.to_string() })))
            })
            .collect())
    }

    /// The worker confirms it starts a task it was handed: `scheduled → running`, a new attempt,
    /// leased until `lease_until` (extended by heartbeats). Repeating it is harmless.
    pub async fn start(
        &self,
        id: Uuid,
        holder: Holder<'_>,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Execution> {
        self.drive_one(id, |s| lifecycle::start(s, &holder, now, lease_until)).await?;
        self.get_execution(id).await?.ok_or(StoreError::NotFound { what: "execution", id: id.to_string() })
    }

    /// `start` for every task of a poll reply (one statement for tasks that started alike). Per
    /// lease: the status afterwards or why it cannot start; and, for those started now, how long
    /// each had waited since it was (last) queued.
    pub async fn start_many(
        &self,
        leases: &[(Uuid, String)],
        worker: Uuid,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<(Vec<(Uuid, Result<ExecutionStatus>)>, Vec<Duration>)> {
        let results = self
            .drive_items(
                leases,
                |l| l.0,
                |l, s| lifecycle::start(s, &Holder { token: &l.1, worker }, now, lease_until),
            )
            .await?;
        let mut waited = Vec::new();
        let out = results
            .into_iter()
            .map(|(id, r)| {
                if let Ok(Driven::Applied(a)) = &r {
                    if let Some(at) = a.scheduled_at {
                        waited.push(Duration::from_millis(
                            now.millis().saturating_sub(at.millis()).max(0) as u64
                        ));
                    }
                }
                (id, r.map(|d| d.status()))
            })
            .collect();
        Ok((out, waited))
    }

    /// Records how the current attempt ended (see `lifecycle::report`). Idempotent for the same
    /// lease once ended; any other lease is stale.
    pub async fn complete(
        &self,
        id: Uuid,
        holder: Holder<'_>,
        report: &Report,
        now: Timestamp,
    ) -> Result<Execution> {
        if let Driven::Applied(Applied { refused_report: Some(why), .. }) =
            self.drive_one(id, |s| lifecycle::report(s, &holder, report, now)).await?
        {
            return Err(StoreError::RefusedReport { id: id.to_string(), message: why });
        }
        self.get_execution(id).await?.ok_or(StoreError::NotFound { what: "execution", id: id.to_string() })
    }

    /// `complete` for a worker's batch of reports, in one transaction.
    pub async fn complete_many(
        &self,
        items: &[(Uuid, String, Report)],
        worker: Uuid,
        now: Timestamp,
    ) -> Result<Vec<(Uuid, Result<Driven>)>> {
        self.drive_items(
            items,
            |i| i.0,
            |i, s| lifecycle::report(s, &Holder { token: &i.1, worker }, &i.2, now),
        )
        .await
    }

    /// Cancels a waiting execution at once; asks the worker to stop a running one (`canceling`,
    /// delivered with its next heartbeat). Canceling a canceling execution changes nothing.
    pub async fn cancel_execution(&self, id: Uuid, actor: &str, now: Timestamp) -> Result<Execution> {
        self.drive_one(id, |s| lifecycle::cancel(s, actor, now)).await?;
        self.get_execution(id).await?.ok_or(StoreError::NotFound { what: "execution", id: id.to_string() })
    }

    /// A worker gives back a task it cannot finish (it is shutting down): treated like a lost
    /// lease, at once. `None` when there is nothing to release (it already ended).
    pub async fn release(&self, id: Uuid, holder: Holder<'_>, now: Timestamp) -> Result<Option<Applied>> {
        match self
            .drive_one(id, |s| lifecycle::lease_lost(s, &LeaseLoss::Released(holder.clone()), now))
            .await?
        {
            Driven::Applied(a) => Ok(Some(a)),
            Driven::Unchanged(_) => Ok(None),
        }
    }

    /// Running executions whose lease ran out (their worker stopped renewing it): a new attempt
    /// when the retry policy allows, `abandoned` otherwise, `canceled` if a cancel was pending.
    pub async fn expire_leases(&self, now: Timestamp, staleness: Duration) -> Result<Vec<Applied>> {
        let ids = self
            .ids_where(
                "status IN ('running', 'canceling') AND lease_expires_at < $1 ORDER BY lease_expires_at LIMIT 500",
                now,
            )
            .await?;
        let loss = LeaseLoss::Expired { staleness };
        Ok(applied_only(self.drive(&ids, |s| lifecycle::lease_lost(s, &loss, now)).await?))
    }

    /// Fails executions that waited in `scheduled` longer than `timeout` (seed 003's execution
    /// timeout monitor), with the seed's error object.
    pub async fn fail_unstarted(&self, timeout: Duration, now: Timestamp) -> Result<Vec<Applied>> {
        // Each by its own timeout when it has one, else by the server's.
        // Workflows and inquiries wait for the server, not for a worker.
        let sql =
            "SELECT id FROM executions WHERE status = 'scheduled' AND queue NOT IN ('workflow', 'inquiry')
             AND scheduled_at < $1 - COALESCE(scheduled_timeout_ms, $2) ORDER BY id LIMIT 500";
        let rows: Vec<String> = read_pool!(self, p => {
            sqlx::query_scalar(sql).bind(now.millis()).bind(timeout.as_millis() as i64).fetch_all(p).await?
        });
        let ids = rows.iter().map(|s| uuid("executions", s)).collect::<Result<Vec<_>>>()?;
        Ok(applied_only(self.drive(&ids, |s| lifecycle::schedule_timeout(s, timeout, now)).await?))
    }

    async fn ids_where(&self, filter: &str, t: Timestamp) -> Result<Vec<Uuid>> {
        let sql = format!("SELECT id FROM executions WHERE {filter}");
        let rows: Vec<String> =
            read_pool!(self, p => { sqlx::query_scalar(&sql).bind(t.millis()).fetch_all(p).await? });
        rows.iter().map(|s| uuid("executions", s)).collect()
    }
}

/// The executions a monitor's drive changed (the rest had moved on: nothing to report).
fn applied_only(v: Vec<(Uuid, Result<Driven>)>) -> Vec<Applied> {
    v.into_iter()
        .filter_map(|(_, r)| match r {
            Ok(Driven::Applied(a)) => Some(a),
            _ => None,
        })
        .collect()
}
